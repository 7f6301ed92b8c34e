//! Each tenant's share of the spool: its undelivered records' bytes (as stored: compressed on
//! disk), against the largest fraction of the spool's capacity it may hold, so one tenant's
//! backlog cannot take the room every other tenant needs.
//!
//! Counted from the start of this process: records replayed from an earlier run are not
//! charged (nothing is released for them either).

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct SpoolShares {
    /// Bytes each tenant may hold; tenants with the whole spool are not listed.
    limits: HashMap<String, u64>,
    used: Mutex<HashMap<String, u64>>,
}

impl SpoolShares {
    /// `shares`: (tenant, fraction of `capacity`) for every tenant.
    pub fn new(capacity: u64, shares: impl IntoIterator<Item = (String, f64)>) -> Self {
        let limits = shares
            .into_iter()
            .filter(|(_, share)| *share < 1.0)
            .map(|(tenant, share)| (tenant, (capacity as f64 * share) as u64))
            .collect();
        Self {
            limits,
            used: Mutex::default(),
        }
    }

    /// Charges `bytes` to `tenant`, or says why not: its share would be passed.
    pub fn charge(&self, tenant: Option<&str>, bytes: u64) -> Result<(), String> {
        let Some(tenant) = tenant else { return Ok(()) };
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let held = used.get(tenant).copied().unwrap_or(0);
        if let Some(&limit) = self.limits.get(tenant)
            && held + bytes > limit
        {
            return Err(format!(
                "tenant '{tenant}' holds {held} of the {limit} spool bytes its share allows"
            ));
        }
        *used.entry(tenant.to_string()).or_insert(0) += bytes;
        Ok(())
    }

    /// Gives back what `charge` took, once the record is delivered (or its append failed).
    pub fn release(&self, tenant: Option<&str>, bytes: u64) {
        let Some(tenant) = tenant else { return };
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = used.get_mut(tenant) {
            *held = held.saturating_sub(bytes);
        }
    }

    /// Bytes the tenant's undelivered records hold.
    pub fn used(&self, tenant: &str) -> u64 {
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_is_held_to_its_share_and_others_are_not() {
        let shares = SpoolShares::new(1000, [("a".into(), 0.25), ("b".into(), 1.0)]);
        assert!(shares.charge(Some("a"), 200).is_ok());
        let refused = shares.charge(Some("a"), 100).unwrap_err();
        assert!(refused.contains("tenant 'a'"), "{refused}");
        assert!(
            shares.charge(Some("b"), 900).is_ok(),
            "b has the whole spool"
        );
        assert!(shares.charge(None, 5000).is_ok(), "no tenant, no share");
        shares.release(Some("a"), 200);
        assert_eq!(shares.used("a"), 0);
        assert!(shares.charge(Some("a"), 250).is_ok());
        shares.release(Some("a"), 10_000);
        assert_eq!(shares.used("a"), 0, "never below zero");
    }
}
