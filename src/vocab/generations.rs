//! A map that forgets in bulk: two generations, the older dropped whole when the newer fills.
//! Used where a cache only needs "the most recent N", so no per-entry order or expiry is kept:
//! evicting entry by entry churned the tables (insert, remove, tombstones) on every trace and
//! kept an order queue beside them (BENCHMARKS.md, "Decisions").

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

pub struct Generations<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
    per_generation: usize,
}

impl<K: Eq + Hash, V> Generations<K, V> {
    /// Holds the most recent `per_generation` entries at least, `2 * per_generation - 1` at most.
    pub fn new(per_generation: usize) -> Self {
        Self {
            current: HashMap::new(),
            previous: HashMap::new(),
            per_generation: per_generation.max(1),
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.current.contains_key(key) || self.previous.contains_key(key)
    }

    /// Inserts into the current generation (a key also in the previous one answers with this
    /// value from now on). Returns whether the current generation filled and was rotated.
    pub fn insert(&mut self, key: K, value: V) -> bool {
        self.current.insert(key, value);
        let full = self.current.len() >= self.per_generation;
        if full {
            self.rotate();
        }
        full
    }

    /// The current generation becomes the previous one; the old previous is forgotten (its
    /// allocation reused, so a steady load does not keep touching fresh memory).
    pub fn rotate(&mut self) {
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.clear();
    }

    pub fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
    }

    /// Entries held (a key in both generations counts twice).
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty() && self.previous.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_recent_generation_is_always_held() {
        let mut g = Generations::new(3);
        for n in 0..10 {
            g.insert(n, n * 10);
            assert!(g.len() <= 5, "{}", g.len());
        }
        for n in 7..10 {
            assert_eq!(g.get(&n), Some(&(n * 10)));
        }
        assert!(!g.contains_key(&0), "the oldest are forgotten");
    }

    #[test]
    fn a_key_inserted_again_answers_with_its_latest_value() {
        let mut g = Generations::new(2);
        g.insert("a", 1);
        assert!(g.insert("b", 2), "the generation filled and rotated");
        g.insert("a", 3);
        assert_eq!(g.get("a"), Some(&3));
        g.clear();
        assert_eq!(g.len(), 0);
    }
}
