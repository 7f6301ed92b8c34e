//! Built-in detectors of personal data and secrets in text: each a regular expression for the
//! candidates and, where the format has one, a check that cuts false positives (Luhn for card
//! numbers, ISO 7064 mod 97 for IBANs, address parsing for IP addresses).

use regex::Regex;

/// A built-in detector's name, as `[[redaction.rules]] patterns` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detector {
    Email,
    CreditCard,
    Phone,
    Ip,
    Iban,
    BearerToken,
    ApiKey,
}

impl Detector {
    pub const ALL: [Detector; 7] = [
        Detector::Email,
        Detector::CreditCard,
        Detector::Phone,
        Detector::Ip,
        Detector::Iban,
        Detector::BearerToken,
        Detector::ApiKey,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::CreditCard => "credit_card",
            Detector::Phone => "phone",
            Detector::Ip => "ip",
            Detector::Iban => "iban",
            Detector::BearerToken => "bearer_token",
            Detector::ApiKey => "api_key",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The candidates' expression. ASCII word boundaries and digit classes: Unicode ones keep
    /// the regex engine off its DFA, which made a scan of every span many times slower.
    fn pattern(self) -> &'static str {
        match self {
            // RFC 5322's common subset: local part of atoms and dots, a dotted domain with a
            // top-level label of letters.
            Detector::Email => {
                r"(?i)(?-u:\b)[a-z0-9][a-z0-9._%+-]{0,63}@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}(?-u:\b)"
            }
            // 13-19 digits, in groups separated by single spaces or dashes.
            Detector::CreditCard => r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)",
            // E.164 (+ and 8-15 digits, separators allowed) or a national form with an area code
            // in parentheses or a leading 0, then 6-10 more digits in groups.
            Detector::Phone => {
                r"(?:\+[0-9]{1,3}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9](?:[ .-]?[0-9]){6,13}(?-u:\b))|(?:\([0-9]{2,4}\)[ .-]?[0-9]{3,4}[ .-]?[0-9]{3,4}(?-u:\b))|(?:(?-u:\b)0[0-9]{1,4}[ .-][0-9]{2,4}[ .-][0-9]{3,4}(?-u:\b))"
            }
            // Candidates only; `confirm` parses them.
            Detector::Ip => {
                r"(?i)(?-u:\b)(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7})(?-u:\b)"
            }
            // Two letters, two check digits, 11-30 alphanumerics, optionally in groups of four.
            Detector::Iban => {
                r"(?-u:\b)[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?(?-u:\b)"
            }
            // An Authorization header's bearer credential.
            Detector::BearerToken => r"(?i)(?-u:\b)bearer[ \t]+[a-z0-9._~+/-]{16,}=*",
            // Common shapes: OpenAI/Anthropic `sk-…`, AWS access key ids, GitHub, Slack, Google,
            // Stripe live keys, and JWTs.
            Detector::ApiKey => {
                r"(?-u:\b)(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|[rs]k_live_[0-9A-Za-z]{24,}|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
            }
        }
    }

    /// Whether a candidate is one (a checksum or a parse where the format has one).
    fn confirm(self, candidate: &str) -> bool {
        match self {
            Detector::CreditCard => luhn(candidate),
            Detector::Iban => iban_checksum(candidate),
            Detector::Ip => {
                candidate.parse::<std::net::Ipv4Addr>().is_ok()
                    || (candidate.contains("::") || candidate.matches(':').count() == 7)
                        && candidate.parse::<std::net::Ipv6Addr>().is_ok()
            }
            Detector::Phone => {
                let digits = candidate.chars().filter(char::is_ascii_digit).count();
                (7..=15).contains(&digits)
            }
            _ => true,
        }
    }
}

/// A compiled detector.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub detector: Detector,
    regex: Regex,
}

impl Compiled {
    /// None only if a built-in pattern does not compile, which the tests rule out.
    pub fn new(detector: Detector) -> Option<Self> {
        Some(Self {
            detector,
            regex: Regex::new(detector.pattern()).ok()?,
        })
    }

    /// The candidates' expression, for the prefilter.
    pub fn pattern(&self) -> &'static str {
        self.detector.pattern()
    }

    /// Byte ranges of the confirmed matches in `text`.
    pub fn find(&self, text: &str) -> Vec<std::ops::Range<usize>> {
        self.regex
            .find_iter(text)
            .filter(|m| self.detector.confirm(m.as_str()))
            .map(|m| m.range())
            .collect()
    }
}

/// The Luhn check over the digits of `s` (separators ignored).
fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2, d * 2) {
            (1, doubled) if doubled > 9 => doubled - 9,
            (1, doubled) => doubled,
            _ => d,
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616's check: move the first four characters to the end, letters to 10-35, mod 97 = 1.
fn iban_checksum(s: &str) -> bool {
    let compact: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let mut remainder: u32 = 0;
    for c in compact[4..].iter().chain(&compact[..4]) {
        let value = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        for digit in value.to_string().chars().filter_map(|d| d.to_digit(10)) {
            remainder = (remainder * 10 + digit) % 97;
        }
    }
    remainder == 1
}
