//! Picking two adjacent free loopback TCP ports (swtpm's server port P and control port P+1).
//!
//! The OS picks P (bind to port 0), we check P+1 by binding it too, then release both for
//! swtpm. Another process can grab them in between: the caller retries when swtpm fails to
//! start. This module never binds a fixed port.

use std::net::{Ipv4Addr, TcpListener};

use super::Error;

/// How many OS-chosen candidates to try before giving up.
const ATTEMPTS: u32 = 64;

/// Returns a port P such that P and P+1 were both free on 127.0.0.1 a moment ago.
pub(crate) fn free_pair() -> Result<u16, Error> {
    for _ in 0..ATTEMPTS {
        let Ok(first) = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) else {
            continue;
        };
        let Ok(addr) = first.local_addr() else {
            continue;
        };
        let Some(next) = addr.port().checked_add(1) else {
            continue;
        };
        if TcpListener::bind((Ipv4Addr::LOCALHOST, next)).is_ok() {
            return Ok(addr.port());
        }
    }
    Err(Error::NoFreePorts { attempts: ATTEMPTS })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_is_adjacent_and_bindable() {
        // Other tests bind ports concurrently, so a pair can be taken between the check and
        // our bind (the same race the harness survives by retrying a start): a few tries
        // must give a pair we can bind.
        let bound = (0..10).find_map(|_| {
            let p = free_pair().unwrap();
            let a = TcpListener::bind((Ipv4Addr::LOCALHOST, p)).ok()?;
            let b = TcpListener::bind((Ipv4Addr::LOCALHOST, p + 1)).ok()?;
            Some((a, b))
        });
        let (a, b) = bound.expect("no bindable adjacent pair in 10 tries");
        assert_eq!(
            a.local_addr().unwrap().port() + 1,
            b.local_addr().unwrap().port()
        );
    }
}
