//! A set of attribute keys, asked once per attribute of every span.

/// A set of attribute keys grouped by length: most keys a span carries are told apart by their
/// length alone, the rest by a comparison or two. It is asked once per attribute of every
/// span, where hashing each key (SipHash) cost more than telling keys apart this way.
#[derive(Debug, Clone, Default)]
pub(super) struct KeySet {
    by_len: Vec<Vec<String>>,
}

impl KeySet {
    pub(super) fn new(keys: impl IntoIterator<Item = String>) -> Self {
        let mut set = Self::default();
        for key in keys {
            if set.contains(&key) {
                continue;
            }
            if set.by_len.len() <= key.len() {
                set.by_len.resize_with(key.len() + 1, Vec::new);
            }
            set.by_len[key.len()].push(key);
        }
        set
    }

    /// Takes bytes: span attribute keys are compared as they sit on the wire.
    pub(super) fn contains(&self, key: impl AsRef<[u8]>) -> bool {
        let key = key.as_ref();
        self.by_len
            .get(key.len())
            .is_some_and(|same_len| same_len.iter().any(|k| k.as_bytes() == key))
    }
}
