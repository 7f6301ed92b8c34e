//! One budget for the decoded request bytes that all requests hold at once, so that concurrent
//! decompression bombs (or large bodies) cost one limit, not one limit each. Bytes are charged
//! before they are allocated and the charge travels with them: it is given back when the last
//! view of the body is dropped.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The shared budget (`receiver.max_inflight_decompressed_bytes`).
#[derive(Clone)]
pub struct DecodeBudget {
    permits: Arc<Semaphore>,
}

/// Bytes taken from the budget, given back on drop.
pub struct Charge {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Charge {
    /// Nothing charged.
    pub fn none() -> Self {
        Self { _permit: None }
    }

    /// Takes over `other`'s bytes (both from the same budget).
    pub fn merge(&mut self, other: Charge) {
        match (&mut self._permit, other._permit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

impl DecodeBudget {
    pub fn new(bytes: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Takes `bytes` from the budget now, or `None` when it does not hold that many.
    pub fn charge(&self, bytes: usize) -> Option<Charge> {
        if bytes == 0 {
            return Some(Charge::none());
        }
        let n = u32::try_from(bytes).ok()?;
        self.permits
            .clone()
            .try_acquire_many_owned(n)
            .ok()
            .map(|p| Charge { _permit: Some(p) })
    }

    /// Bytes not charged now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

/// A buffer kept together with its charge.
struct Charged<T> {
    bytes: T,
    _charge: Charge,
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Charged<T> {
    fn as_ref(&self) -> &[u8] {
        self.bytes.as_ref()
    }
}

/// `bytes` as `Bytes` that give their charge back when the last clone or slice is dropped.
pub fn charged<T>(bytes: T, charge: Charge) -> Bytes
where
    T: AsRef<[u8]> + Send + 'static,
{
    Bytes::from_owner(Charged {
        bytes,
        _charge: charge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_shared_and_come_back_with_the_last_view() {
        let budget = DecodeBudget::new(100);
        let a = budget.charge(60).expect("fits");
        assert!(budget.charge(50).is_none(), "only 40 left");
        let body = charged(vec![1u8; 60], a);
        let slice = body.slice(10..20);
        drop(body);
        assert_eq!(budget.available(), 40, "a slice still holds the charge");
        drop(slice);
        assert_eq!(budget.available(), 100);
        assert!(budget.charge(0).is_some());
        assert!(budget.charge(usize::MAX).is_none());
    }
}
