//! Request retransmission over UDP (RFC 8489 section 6.2.1): send at 0, RTO, 3 RTO, 7 RTO, ...
//! (the RTO doubling each time) up to `max_sends` transmissions, then wait `final_wait_factor`
//! times the initial RTO for a response. With the defaults (500 ms, 7, 16) that is sends at
//! 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s and giving up at 39.5 s. An optional budget cuts it short.
use std::time::Duration;

/// When to (re)transmit a request and when to give up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitPolicy {
    /// The first retransmission timeout (RFC 8489's RTO); doubled after every transmission.
    pub initial_rto: Duration,
    /// Transmissions at most (RFC 8489's Rc).
    pub max_sends: u32,
    /// After the last transmission, wait this many initial RTOs (RFC 8489's Rm).
    pub final_wait_factor: u32,
    /// If set, no transmission at or after it, and give up by then.
    pub budget: Option<Duration>,
}

impl Default for RetransmitPolicy {
    fn default() -> Self {
        RetransmitPolicy {
            initial_rto: Duration::from_millis(500),
            max_sends: 7,
            final_wait_factor: 16,
            budget: None,
        }
    }
}

impl RetransmitPolicy {
    /// The default policy, but giving up after `budget`.
    pub fn with_budget(budget: Duration) -> Self {
        RetransmitPolicy {
            budget: Some(budget),
            ..RetransmitPolicy::default()
        }
    }

    /// When to transmit, as offsets from the first transmission (always at least one, at 0).
    pub fn send_offsets(&self) -> Vec<Duration> {
        let mut offsets = vec![Duration::ZERO];
        let mut at = Duration::ZERO;
        let mut rto = self.initial_rto;
        for _ in 1..self.max_sends.max(1) {
            at = at.saturating_add(rto);
            rto = rto.saturating_mul(2);
            if self.budget.is_some_and(|b| at >= b) {
                break;
            }
            offsets.push(at);
        }
        offsets
    }

    /// When to give up, as an offset from the first transmission.
    pub fn give_up_after(&self) -> Duration {
        let last = self.send_offsets().last().copied().unwrap_or_default();
        let natural = last.saturating_add(self.initial_rto.saturating_mul(self.final_wait_factor));
        match self.budget {
            Some(budget) => natural.min(budget),
            None => natural,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().copied().map(Duration::from_millis).collect()
    }

    #[test]
    fn rfc8489_default_schedule() {
        let p = RetransmitPolicy::default();
        assert_eq!(
            p.send_offsets(),
            ms(&[0, 500, 1500, 3500, 7500, 15500, 31500])
        );
        assert_eq!(p.give_up_after(), Duration::from_millis(39_500));
    }

    #[test]
    fn budget_cuts_the_schedule() {
        let p = RetransmitPolicy::with_budget(Duration::from_secs(5));
        assert_eq!(p.send_offsets(), ms(&[0, 500, 1500, 3500]));
        assert_eq!(p.give_up_after(), Duration::from_secs(5));
        // A budget past the natural end changes nothing.
        let p = RetransmitPolicy::with_budget(Duration::from_secs(60));
        assert_eq!(p.send_offsets().len(), 7);
        assert_eq!(p.give_up_after(), Duration::from_millis(39_500));
        // A tiny budget still sends once.
        let p = RetransmitPolicy::with_budget(Duration::from_millis(1));
        assert_eq!(p.send_offsets(), ms(&[0]));
        assert_eq!(p.give_up_after(), Duration::from_millis(1));
    }

    #[test]
    fn custom_counts() {
        let p = RetransmitPolicy {
            initial_rto: Duration::from_millis(100),
            max_sends: 3,
            final_wait_factor: 4,
            budget: None,
        };
        assert_eq!(p.send_offsets(), ms(&[0, 100, 300]));
        assert_eq!(p.give_up_after(), Duration::from_millis(700));
        let zero = RetransmitPolicy { max_sends: 0, ..p };
        assert_eq!(zero.send_offsets(), ms(&[0]));
    }
}
