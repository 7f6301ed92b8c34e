//! Shell-style patterns for names: `*` any run of characters, `?` any one, the rest literal.

/// Whether `name` matches `pattern` as a whole. Linear in practice: the classic two-pointer
/// walk that backtracks only to the last `*`, so no pattern can make it explode.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_matches("team-a-*", "team-a-prod"));
        assert!(glob_matches("team-a-*", "team-a-"));
        assert!(!glob_matches("team-a-*", "team-b-prod"));
        assert!(!glob_matches("team-a-*", "x-team-a-prod"));
        assert!(glob_matches("*-prod", "team-a-prod"));
        assert!(glob_matches("team-?", "team-a"));
        assert!(!glob_matches("team-?", "team-ab"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
        assert!(glob_matches("実験-*", "実験-一"));
    }

    #[test]
    fn many_stars_stay_cheap() {
        let pattern = "*a".repeat(30);
        let name = "a".repeat(10_000) + "b";
        assert!(!glob_matches(&pattern, &name));
    }
}
