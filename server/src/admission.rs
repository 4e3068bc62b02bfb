//! Connection limits across every core: `max_connections` per process and
//! `max_connections_per_ip`. Touched once per connect and once per close, never
//! on the delivery path, so an atomic and a mutex shared by the cores are fine.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The process's open connections, counted in total and per source IP.
pub struct Admission {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_total: usize,
    /// 0: no per-IP limit.
    max_per_ip: usize,
}

/// One counted connection; dropping it uncounts it.
pub struct Ticket {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
    over_limit: bool,
}

impl Admission {
    /// Limits of `max_total` connections, and `max_per_ip` per source IP (0: none).
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            max_total,
            max_per_ip,
        })
    }

    /// Counts a new connection from `ip`. The ticket says whether it is over a
    /// limit; it is counted either way until dropped, so a flood of refused
    /// connections still shows in the count while their sockets are open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Ticket {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let mut over_limit = total > self.max_total;
        let ip = (self.max_per_ip > 0).then(|| {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let count = per_ip.entry(ip).or_insert(0);
            *count += 1;
            over_limit |= *count > self.max_per_ip;
            ip
        });
        Ticket {
            admission: self.clone(),
            ip,
            over_limit,
        }
    }

    /// Connections counted now.
    #[cfg(test)]
    fn count(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Ticket {
    /// Whether the connection is past a limit and must be turned away.
    pub fn over_limit(&self) -> bool {
        self.over_limit
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut per_ip = self.admission.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_total_and_per_ip_and_forgets_on_drop() {
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let admission = Admission::new(3, 2);
        let t1 = admission.admit(a);
        let t2 = admission.admit(a);
        assert!(!t1.over_limit() && !t2.over_limit());
        let t3 = admission.admit(a);
        assert!(t3.over_limit(), "third from one IP");
        drop(t3);
        let t4 = admission.admit(b);
        assert!(!t4.over_limit());
        let t5 = admission.admit(b);
        assert!(t5.over_limit(), "fourth in total");
        drop((t1, t5));
        assert_eq!(admission.count(), 2);
        assert!(!admission.admit(a).over_limit());
        assert!(admission.per_ip.lock().unwrap().get(&a) == Some(&1));
    }

    #[test]
    fn no_per_ip_limit_keeps_no_map() {
        let admission = Admission::new(10, 0);
        let _t = admission.admit("127.0.0.1".parse().unwrap());
        assert!(admission.per_ip.lock().unwrap().is_empty());
    }
}
