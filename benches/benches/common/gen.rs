//! The records the benches index: a deterministic generator of realistic log lines
//! (~180-byte bodies, six services, trace and span ids, two labels, one attribute), shared
//! by the index bench and the cost model, and the process's CPU time they report.

#![allow(dead_code)]

use weir_proto::v1::StoredRecord;

/// One hour in nanoseconds.
pub const HOUR: i64 = 3_600_000_000_000;
/// An hour boundary, the start of the records' day.
pub const T0: i64 = 1_700_000_000_000_000_000 - 1_700_000_000_000_000_000 % HOUR;

/// A deterministic generator of realistic log records (xorshift, no dependencies).
pub struct Gen(pub u64);

impl Gen {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }

    /// Record `i` of `n`, timestamps spread evenly over 24 hours.
    pub fn record(&mut self, i: u64, n: u64) -> StoredRecord {
        let services = ["api", "checkout", "payments", "search", "auth", "inventory"];
        let paths = [
            "/api/v1/orders",
            "/api/v1/users/me",
            "/api/v1/cart/items",
            "/healthz",
            "/api/v2/search",
        ];
        let msgs = [
            "request completed",
            "connection reset by peer while reading response body",
            "upstream timeout after retries exhausted",
            "cache miss for key, fetching from primary store",
            "slow query detected in orders repository",
            "user session refreshed successfully",
        ];
        let service = self.pick(&services);
        let status = [200, 200, 200, 201, 404, 500, 503][(self.next() % 7) as usize];
        let level = match status {
            500 | 503 => 5,
            404 => 4,
            _ => 3,
        };
        let trace = format!("{:016x}{:016x}", self.next(), i);
        let body = format!(
            "{} {} status={} duration_ms={} user_id=u{} order_id=o{} bytes={} \
             client=10.{}.{}.{} ua=\"{}\" {}",
            self.pick(&["GET", "POST", "PUT", "DELETE"]),
            self.pick(&paths),
            status,
            self.next() % 2000,
            self.next() % 100_000,
            self.next() % 10_000_000,
            self.next() % 65536,
            self.next() % 256,
            self.next() % 256,
            self.next() % 256,
            self.pick(&[
                "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0",
                "okhttp/4.12.0",
                "Go-http-client/1.1",
                "curl/8.5.0",
            ]),
            self.pick(&msgs),
        );
        let mut r = StoredRecord {
            timestamp_ns: T0 + (i as i128 * 24 * HOUR as i128 / n as i128) as i64,
            level,
            body,
            service: service.into(),
            namespace: "prod".into(),
            pod: format!("{service}-{:x}", self.next() % 16),
            cluster: "eu-west-1".into(),
            trace_id: trace,
            span_id: format!("{:016x}", self.next()),
            ..Default::default()
        };
        r.labels.insert("app".into(), service.into());
        r.labels.insert("env".into(), "production".into());
        r.attributes
            .insert("http.status".into(), status.to_string());
        r
    }
}

/// CPU seconds (user + system) this process has used, every thread included.
pub fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct it is given and nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
