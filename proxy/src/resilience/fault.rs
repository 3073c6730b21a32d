//! Fault injection for drills: a fixed delay and/or an aborted response
//! for a share of requests, configured per destination in TrafficPolicy.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultPolicy {
    #[serde(serialize_with = "super::ser_duration")]
    pub delay: Duration,
    /// 0–100.
    pub delay_percent: f64,
    pub abort_status: u16,
    /// 0–100.
    pub abort_percent: f64,
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Injection {
    pub delay: Option<Duration>,
    pub abort: Option<http::StatusCode>,
}

impl FaultPolicy {
    /// Rolls the dice for one request (delay and abort independently).
    pub fn roll(&self) -> Injection {
        let hit = |percent: f64| percent > 0.0 && rand::random::<f64>() * 100.0 < percent;
        Injection {
            delay: (!self.delay.is_zero() && hit(self.delay_percent)).then_some(self.delay),
            abort: http::StatusCode::from_u16(self.abort_status)
                .ok()
                .filter(|_| hit(self.abort_percent)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_percentages() {
        let f = FaultPolicy {
            delay: Duration::from_millis(5),
            delay_percent: 30.0,
            abort_status: 503,
            abort_percent: 10.0,
        };
        let rolls: Vec<Injection> = (0..10_000).map(|_| f.roll()).collect();
        let delayed = rolls.iter().filter(|i| i.delay.is_some()).count();
        let aborted = rolls.iter().filter(|i| i.abort.is_some()).count();
        assert!((2700..3300).contains(&delayed), "{delayed}");
        assert!((800..1200).contains(&aborted), "{aborted}");
        let none = FaultPolicy {
            delay_percent: 0.0,
            abort_percent: 0.0,
            ..f
        };
        assert!((0..1000).all(|_| none.roll() == Injection::default()));
        let all = FaultPolicy {
            delay_percent: 100.0,
            abort_percent: 100.0,
            ..none
        };
        assert!((0..1000).all(|_| all.roll().abort == Some(http::StatusCode::SERVICE_UNAVAILABLE)));
    }
}
