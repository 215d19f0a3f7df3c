//! Loopback ports for servers whose address must be known before they start (the members
//! of a test cluster name each other in their configs).
//!
//! Binding port 0 and closing the socket again is not enough: the kernel hands the same
//! port out again as the source port of any outgoing connection (it comes from the
//! ephemeral range), and a cluster test makes hundreds of those, so the node that binds
//! it later finds it taken. The ports here come from below the ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`, 32768 and up by default), which the
//! kernel never picks on its own, from a block that depends on the process id (test
//! binaries run one after another, and a port a previous one used may still be in
//! TIME_WAIT), and each is checked free with a bind before it is handed out.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the reserved range starts and how many ports it holds (10000..32000).
const FIRST: u32 = 10_000;
const SPAN: u32 = 22_000;

static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A port of 127.0.0.1 that nothing listens on now, outside the kernel's ephemeral
/// range, not handed out before by this process.
///
/// # Panics
///
/// When no port of the range can be bound (every one taken).
pub fn loopback_port() -> u16 {
    let start = (std::process::id().wrapping_mul(7919)) % SPAN;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::AcqRel, Ordering::Acquire);
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::AcqRel) % SPAN;
        let port = (FIRST + n) as u16;
        if TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

/// [`loopback_port`] as an address of 127.0.0.1.
pub fn loopback_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, loopback_port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| loopback_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ports.len(),
            "a port handed out twice: {ports:?}"
        );
        for p in ports {
            assert!(
                (10_000..32_000).contains(&p),
                "{p} is outside the reserved range"
            );
            TcpListener::bind(("127.0.0.1", p)).expect("the port is free");
        }
    }
}
