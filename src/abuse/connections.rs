//! Open connections per source address, so that one address cannot take every
//! connection. Loopback and the networks in `limits.local_networks` (the relay's own
//! applications) have their own, larger limit. An entry exists only per source with a
//! connection open, so there are at most `max_connections` of them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::keys::{lock, source_key};

/// Open connections per source address.
#[derive(Debug, Default)]
pub struct SourceConnections {
    open: Mutex<HashMap<IpAddr, Open>>,
}

#[derive(Debug, Default)]
struct Open {
    count: usize,
    /// A connection over the limit was refused since the source last had none open (so
    /// that the refusal is logged once, not per connection).
    refused: bool,
}

/// Why a source may not open another connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    /// The first refusal since the source last had no connection open.
    pub first: bool,
}

impl SourceConnections {
    /// Counts a new connection from `source` if it has fewer than `max` open.
    pub fn open(self: &Arc<Self>, source: IpAddr, max: usize) -> Result<SourceSlot, OverLimit> {
        let key = source_key(source);
        let mut open = lock(&self.open);
        let entry = open.entry(key).or_default();
        if entry.count >= max {
            let first = !std::mem::replace(&mut entry.refused, true);
            if entry.count == 0 {
                open.remove(&key);
            }
            return Err(OverLimit { first });
        }
        entry.count += 1;
        Ok(SourceSlot {
            table: self.clone(),
            key,
        })
    }

    /// Connections open from `source` now.
    pub fn count(&self, source: IpAddr) -> usize {
        lock(&self.open)
            .get(&source_key(source))
            .map_or(0, |o| o.count)
    }

    /// Sources with a connection open now.
    pub fn sources(&self) -> usize {
        lock(&self.open).len()
    }
}

/// One counted connection; dropping it uncounts it.
#[derive(Debug)]
pub struct SourceSlot {
    table: Arc<SourceConnections>,
    key: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.table.open);
        if let Some(entry) = open.get_mut(&self.key) {
            entry.count = entry.count.saturating_sub(1);
            if entry.count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_are_counted_per_source_and_released() {
        let table = Arc::new(SourceConnections::default());
        let a = ip("192.0.2.1");
        let slots: Vec<_> = (0..3).map(|_| table.open(a, 3).unwrap()).collect();
        assert_eq!(table.open(a, 3).unwrap_err(), OverLimit { first: true });
        assert_eq!(table.open(a, 3).unwrap_err(), OverLimit { first: false });
        let b = table.open(ip("192.0.2.2"), 3).unwrap();
        assert_eq!((table.count(a), table.sources()), (3, 2));
        drop(slots);
        drop(b);
        assert_eq!(
            table.sources(),
            0,
            "nothing is kept for a source with none open"
        );
        let again: Vec<_> = (0..3).map(|_| table.open(a, 3).unwrap()).collect();
        assert_eq!(table.open(a, 3).unwrap_err(), OverLimit { first: true });
        drop(again);
        // IPv6 by /64.
        let _one = table.open(ip("2001:db8::1"), 1).unwrap();
        assert!(table.open(ip("2001:db8::2"), 1).is_err());
    }
}
