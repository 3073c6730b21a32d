//! Choosing an endpoint: power of two choices over peak-EWMA latency (the
//! default), weighted round robin, or least request; ejected endpoints are
//! skipped (or probed, see [`breaker`](super::breaker)).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::breaker::{Admit, Breaker};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancer {
    #[default]
    PeakEwma,
    RoundRobin,
    LeastRequest,
}

/// How fast the latency estimate forgets: the weight of a sample halves
/// about every 7 s (e^(-t/10s)).
const DECAY: Duration = Duration::from_secs(10);
/// The least latency a failure is assumed to have taken (see
/// [`EndpointStats::observe_failure`]).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// See [`EndpointStats::observe_failure`].
const FAILURE_PENALTY: u32 = 5;

/// What the balancer and the breaker know about one endpoint. Shared by
/// every version of the endpoint list that contains it.
#[derive(Debug)]
pub struct EndpointStats {
    in_flight: AtomicUsize,
    ewma: Mutex<PeakEwma>,
    pub breaker: Breaker,
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            ewma: Mutex::new(PeakEwma {
                cost_ns: DEFAULT_RTT.as_nanos() as f64,
                stamp: Instant::now(),
                measured: false,
            }),
            breaker: Breaker::default(),
        }
    }
}

#[derive(Debug)]
struct PeakEwma {
    cost_ns: f64,
    stamp: Instant,
    /// No response seen yet: the first one replaces the default.
    measured: bool,
}

impl PeakEwma {
    /// Decays the estimate for the time since it was last touched.
    fn decay(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.cost_ns *= (-elapsed / DECAY.as_secs_f64()).exp();
        self.stamp = now;
    }
}

impl EndpointStats {
    /// Counts a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records a response's latency (to headers): a slower one than the
    /// estimate replaces it at once (peak), a faster one moves it gradually.
    /// The first response sets it.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let mut e = self.ewma.lock().expect("ewma lock");
        let elapsed = now.saturating_duration_since(e.stamp).as_secs_f64();
        if rtt > e.cost_ns || !e.measured {
            e.cost_ns = rtt;
            e.measured = true;
        } else {
            let w = (-elapsed / DECAY.as_secs_f64()).exp();
            e.cost_ns = e.cost_ns * w + rtt * (1.0 - w);
        }
        e.stamp = now;
    }

    /// Records a failed response: it counts as taking [`FAILURE_PENALTY`]
    /// times the current estimate (at least the default), so an endpoint
    /// that fails fast does not attract traffic for being fast.
    pub fn observe_failure(&self, rtt: Duration, now: Instant) {
        let cost = {
            let e = self.ewma.lock().expect("ewma lock");
            Duration::from_nanos(e.cost_ns as u64)
        };
        self.observe(rtt.max(cost.max(DEFAULT_RTT) * FAILURE_PENALTY), now);
    }

    /// Records a try that ended without an answer after `elapsed` (its
    /// caller went away): the answer would have taken at least that long,
    /// so a longer wait than the estimate raises it (peak), a shorter one
    /// says nothing.
    pub fn observe_at_least(&self, elapsed: Duration, now: Instant) {
        let mut e = self.ewma.lock().expect("ewma lock");
        e.decay(now);
        let elapsed = elapsed.as_nanos() as f64;
        if elapsed > e.cost_ns || !e.measured {
            e.cost_ns = e.cost_ns.max(elapsed);
            e.measured = true;
        }
    }

    /// The decayed latency estimate in nanoseconds; `None` before the
    /// first response.
    fn ewma_cost(&self, now: Instant) -> Option<f64> {
        let mut e = self.ewma.lock().expect("ewma lock");
        e.decay(now);
        e.measured.then_some(e.cost_ns)
    }
}

/// Expected cost of one more request to each of two endpoints: latency ×
/// (requests in flight + 1). An endpoint not measured yet is assumed as
/// fast as the other, so a new endpoint gets traffic at once (and not a
/// flood: its requests in flight count against it until it answers).
fn ewma_loads(a: &EndpointStats, b: &EndpointStats, now: Instant) -> (f64, f64) {
    let (ca, cb) = match (a.ewma_cost(now), b.ewma_cost(now)) {
        (Some(x), Some(y)) => (x, y),
        (Some(x), None) => (x, x),
        (None, Some(y)) => (y, y),
        (None, None) => (1.0, 1.0),
    };
    // A floor keeps endpoints answering in microseconds comparable by
    // their in-flight counts.
    (
        ca.max(1_000.0) * (a.in_flight() + 1) as f64,
        cb.max(1_000.0) * (b.in_flight() + 1) as f64,
    )
}

pub struct InFlight(Arc<EndpointStats>);

impl InFlight {
    pub fn stats(&self) -> &Arc<EndpointStats> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the balancer needs of an endpoint. Discovery's endpoint type
/// implements it; the balancer keeps to its own data.
pub trait Candidate {
    /// The address a request to it is sent to: what a retry avoids.
    fn addr(&self) -> SocketAddr;
    /// Relative weight (0 counts as 1).
    fn weight(&self) -> u32;
    fn stats(&self) -> &EndpointStats;
}

/// Why no endpoint could be picked.
#[derive(Debug, PartialEq, Eq)]
pub enum NoEndpoint {
    /// The destination has none.
    Empty,
    /// All are ejected.
    AllEjected,
}

/// The endpoint for the next request, and whether it is a breaker probe.
/// `avoid` (the endpoint a retry comes from) is skipped when another is
/// available; `recoverable`: the request survives a failed probe (see
/// [`Breaker::admit`]). `rr` is the destination's round-robin counter.
pub fn pick<'a, E: Candidate>(
    lb: LoadBalancer,
    endpoints: &'a [E],
    rr: &AtomicUsize,
    avoid: Option<SocketAddr>,
    recoverable: bool,
    now: Instant,
) -> Result<(&'a E, bool), NoEndpoint> {
    if endpoints.is_empty() {
        return Err(NoEndpoint::Empty);
    }
    let any_open = endpoints.iter().any(|e| e.stats().breaker.is_open());
    if !any_open && avoid.is_none() {
        return Ok((choose(lb, endpoints, None, rr, now), false));
    }
    // Slow path: some endpoint is ejected, or a retry avoids one.
    let mut usable = Vec::with_capacity(endpoints.len());
    for (i, e) in endpoints.iter().enumerate() {
        match e.stats().breaker.admit(now, recoverable) {
            // An ejected endpoint whose backoff has passed gets this
            // request as its probe.
            Admit::Probe => return Ok((e, true)),
            Admit::Yes => usable.push(i),
            Admit::No => {}
        }
    }
    if usable.is_empty() {
        return Err(NoEndpoint::AllEjected);
    }
    if let Some(avoid) = avoid {
        if usable.iter().any(|&i| endpoints[i].addr() != avoid) {
            usable.retain(|&i| endpoints[i].addr() != avoid);
        }
    }
    Ok((choose(lb, endpoints, Some(&usable), rr, now), false))
}

/// Picks among `usable` (indices into `endpoints`; `None`: all of them,
/// of which there is at least one).
fn choose<'a, E: Candidate>(
    lb: LoadBalancer,
    endpoints: &'a [E],
    usable: Option<&[usize]>,
    rr: &AtomicUsize,
    now: Instant,
) -> &'a E {
    let n = usable.map_or(endpoints.len(), <[usize]>::len);
    let at = |k: usize| usable.map_or(k, |u| u[k]);
    let weight = |k: usize| u64::from(endpoints[at(k)].weight().max(1));
    if n == 1 {
        return &endpoints[at(0)];
    }
    match lb {
        LoadBalancer::RoundRobin => {
            // Weighted: each endpoint gets `weight` consecutive turns of
            // the cycle.
            let total: u64 = (0..n).map(weight).sum();
            let mut x = rr.fetch_add(1, Ordering::Relaxed) as u64 % total;
            for k in 0..n {
                if x < weight(k) {
                    return &endpoints[at(k)];
                }
                x -= weight(k);
            }
            unreachable!("x < total weight")
        }
        LoadBalancer::PeakEwma | LoadBalancer::LeastRequest => {
            if endpoints.iter().any(|e| e.weight() != endpoints[0].weight()) {
                // Unequal weights: a draw in proportion to weight /
                // (requests in flight + 1), as Envoy does for weighted
                // least-request. Idle endpoints get traffic in the ratio
                // of their weights; a slow one piles up requests in flight
                // and so gets proportionally less. (Latency peaks are too
                // noisy to divide weights by: the busier endpoint sees more
                // of them, which skews shares by 10 % and more.)
                let shares: Vec<f64> = (0..n)
                    .map(|k| weight(k) as f64 / (endpoints[at(k)].stats().in_flight() + 1) as f64)
                    .collect();
                let mut x = rand::random::<f64>() * shares.iter().sum::<f64>();
                for (k, s) in shares.iter().enumerate() {
                    if x < *s {
                        return &endpoints[at(k)];
                    }
                    x -= s;
                }
                return &endpoints[at(n - 1)];
            }
            // Equal weights: power of two choices between two different
            // endpoints; the less loaded wins.
            let a = rand::random_range(0..n);
            let b = (a + rand::random_range(1..n)) % n;
            let (sa, sb) = (endpoints[at(a)].stats(), endpoints[at(b)].stats());
            let (la, lb) = match lb {
                LoadBalancer::PeakEwma => ewma_loads(sa, sb, now),
                _ => ((sa.in_flight() + 1) as f64, (sb.in_flight() + 1) as f64),
            };
            if la <= lb {
                &endpoints[at(a)]
            } else {
                &endpoints[at(b)]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Ep {
        addr: SocketAddr,
        weight: u32,
        stats: Arc<EndpointStats>,
    }

    impl Candidate for Ep {
        fn addr(&self) -> SocketAddr {
            self.addr
        }
        fn weight(&self) -> u32 {
            self.weight
        }
        fn stats(&self) -> &EndpointStats {
            &self.stats
        }
    }

    fn endpoints(weights: &[u32]) -> Vec<Ep> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Ep {
                addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                weight: w,
                stats: Arc::default(),
            })
            .collect()
    }

    fn share(eps: &[Ep], lb: LoadBalancer, n: usize, now: Instant) -> Vec<usize> {
        let rr = AtomicUsize::new(0);
        let mut counts = vec![0; eps.len()];
        for _ in 0..n {
            let (e, _) = pick(lb, eps, &rr, None, true, now).unwrap();
            counts[eps.iter().position(|x| x.addr == e.addr).unwrap()] += 1;
        }
        counts
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_ewma_avoids_the_slow_endpoint() {
        let eps = endpoints(&[1, 1, 1]);
        let now = Instant::now();
        for (i, ms) in [(0, 1), (1, 1), (2, 51)] {
            eps[i].stats.observe(Duration::from_millis(ms), now);
        }
        tokio::time::advance(Duration::from_millis(10)).await;
        let counts = share(&eps, LoadBalancer::PeakEwma, 3000, Instant::now());
        // The slow one wins only when drawn twice... which P2C avoids.
        assert!(counts[2] < 300, "slow endpoint got {counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_wait_raises_the_estimate_to_at_least_its_length() {
        let stats = EndpointStats::default();
        let now = Instant::now();
        stats.observe(Duration::from_millis(10), now);
        stats.observe_at_least(Duration::from_millis(2), now);
        assert_eq!(stats.ewma_cost(now), Some(10e6), "a shorter wait says nothing");
        stats.observe_at_least(Duration::from_millis(500), now);
        assert_eq!(stats.ewma_cost(now), Some(500e6), "a longer one is a peak");
        let fresh = EndpointStats::default();
        fresh.observe_at_least(Duration::from_millis(1), now);
        assert_eq!(
            fresh.ewma_cost(now),
            Some(DEFAULT_RTT.as_nanos() as f64),
            "unmeasured: at least the default, and now measured"
        );
        assert!(!stats.breaker.is_open() && !fresh.breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_endpoint_competes_and_fast_failures_repel() {
        let eps = endpoints(&[1, 1]);
        for _ in 0..100 {
            eps[0].stats.observe(Duration::from_millis(1), Instant::now());
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        // The newcomer's first answer is faster: it is cheaper at once
        // (not stuck behind the 30 ms default).
        eps[1].stats.observe(Duration::from_micros(900), Instant::now());
        let counts = share(&eps, LoadBalancer::PeakEwma, 1000, Instant::now());
        assert!(counts[1] > 900, "{counts:?}");
        // Fast failures make it expensive.
        eps[1]
            .stats
            .observe_failure(Duration::from_micros(100), Instant::now());
        let counts = share(&eps, LoadBalancer::PeakEwma, 1000, Instant::now());
        assert!(counts[1] < 50, "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_endpoint_gets_traffic_at_once_but_no_flood() {
        let eps = endpoints(&[1, 1]);
        eps[0].stats.observe(Duration::from_millis(1), Instant::now());
        let counts = share(&eps, LoadBalancer::PeakEwma, 1000, Instant::now());
        assert!(counts[1] > 300, "unmeasured is as good as measured: {counts:?}");
        let _waiting: Vec<_> = (0..3).map(|_| eps[1].stats.start()).collect();
        let counts = share(&eps, LoadBalancer::PeakEwma, 1000, Instant::now());
        assert_eq!(
            counts[1], 0,
            "its requests in flight count against it: {counts:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_forgets_a_spike_over_time() {
        let s = EndpointStats::default();
        let now = Instant::now();
        s.observe(Duration::from_millis(100), now);
        let high = s.ewma_cost(now).unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        let later = s.ewma_cost(Instant::now()).unwrap();
        assert!(later < high / 5.0, "{later} vs {high}");
    }

    #[tokio::test(start_paused = true)]
    async fn least_request_prefers_idle_endpoints() {
        let eps = endpoints(&[1, 1]);
        let _busy: Vec<_> = (0..5).map(|_| eps[0].stats.start()).collect();
        let counts = share(&eps, LoadBalancer::LeastRequest, 1000, Instant::now());
        assert_eq!(counts[0], 0, "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_is_even_and_weights_are_honoured() {
        let eps = endpoints(&[1, 1, 1]);
        assert_eq!(
            share(&eps, LoadBalancer::RoundRobin, 300, Instant::now()),
            [100, 100, 100]
        );
        let eps = endpoints(&[1, 3]);
        assert_eq!(
            share(&eps, LoadBalancer::RoundRobin, 400, Instant::now()),
            [100, 300]
        );
        let counts = share(&eps, LoadBalancer::PeakEwma, 4000, Instant::now());
        // Equal latency: P2C by weight lands near 1:3.
        assert!((700..1300).contains(&counts[0]), "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_endpoints_are_skipped_then_probed() {
        let eps = endpoints(&[1, 1]);
        let policy = super::super::breaker::BreakerPolicy {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(2),
            ..Default::default()
        };
        assert!(eps[0].stats.breaker.failure(&policy, Instant::now(), || true));
        let counts = share(&eps, LoadBalancer::RoundRobin, 10, Instant::now());
        assert_eq!(counts, [0, 10]);
        tokio::time::advance(Duration::from_secs(2)).await;
        let rr = AtomicUsize::new(0);
        let (e, probe) = pick(LoadBalancer::PeakEwma, &eps, &rr, None, true, Instant::now()).unwrap();
        assert!(probe && e.addr == eps[0].addr);
        let (e, probe) = pick(LoadBalancer::PeakEwma, &eps, &rr, None, true, Instant::now()).unwrap();
        assert!(!probe && e.addr == eps[1].addr, "only one probe at a time");
        // Everything ejected: no endpoint.
        assert!(eps[1].stats.breaker.failure(&policy, Instant::now(), || true));
        assert_eq!(
            pick(LoadBalancer::PeakEwma, &eps, &rr, None, true, Instant::now()).unwrap_err(),
            NoEndpoint::AllEjected
        );
    }

    #[test]
    fn a_retry_avoids_the_endpoint_it_comes_from() {
        let eps = endpoints(&[1, 1]);
        let rr = AtomicUsize::new(0);
        for _ in 0..20 {
            let (e, _) = pick(
                LoadBalancer::PeakEwma,
                &eps,
                &rr,
                Some(eps[0].addr),
                true,
                Instant::now(),
            )
            .unwrap();
            assert_eq!(e.addr, eps[1].addr);
        }
        let one = endpoints(&[1]);
        let (e, _) = pick(
            LoadBalancer::RoundRobin,
            &one,
            &rr,
            Some(one[0].addr),
            true,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(e.addr, one[0].addr, "the only endpoint is still used");
    }
}
