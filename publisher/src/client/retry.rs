//! The retry policy of a publish: which answers are retried (429, 5xx, no answer) and which are
//! final (2xx, other 4xx), the `Retry-After` header, and the backoff between attempts
//! (exponential, equal jitter, at least `Retry-After`, capped).

use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;

/// How a publish answer is handled.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StatusClass {
    /// 2xx: the events are committed.
    Success,
    /// 429, 503 and other 5xx: try again (elsewhere), the cluster deduplicates.
    Retry,
    /// Any other 4xx: the request itself is wrong; sending it again cannot help.
    Reject,
}

/// Classifies an HTTP status for publishing.
pub fn classify_status(status: StatusCode) -> StatusClass {
    if status.is_success() {
        StatusClass::Success
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        StatusClass::Retry
    } else {
        StatusClass::Reject
    }
}

/// Whether a transport error (no HTTP answer) is worth retrying: refused, reset and timed-out
/// attempts are (a re-send is deduplicated); a request that could not even be built is not.
pub fn transport_error_retries(err: &reqwest::Error) -> bool {
    !err.is_builder()
}

/// Parses `Retry-After`: delay-seconds (integer or fractional) or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(3600.0)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let millis = (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
    Some(Duration::from_millis(millis.max(0) as u64))
}

/// Bounds and pacing of the retries of one request.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Time from the first attempt after which no further attempt starts.
    pub deadline: Duration,
    /// Timeout of one attempt (connect, send, answer).
    pub attempt_timeout: Duration,
    /// Backoff before the second attempt; doubles per attempt.
    pub base_delay: Duration,
    /// No wait between attempts exceeds this, whatever `Retry-After` says.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 12,
            deadline: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(5),
            base_delay: Duration::from_millis(25),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based): exponential with "equal
    /// jitter" (half fixed, half random, so it still grows), at least `retry_after`, capped.
    pub fn backoff(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_delay);
        let half = exp / 2;
        let jitter = Duration::from_nanos(rng.gen_range(0..=half.as_nanos() as u64));
        let delay = (half + jitter).max(retry_after.unwrap_or_default());
        delay.min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn backoff_grows_within_its_jitter_band() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(1);
        for attempt in 1..=6u32 {
            let exp = Duration::from_millis(10 * (1 << (attempt - 1)));
            for _ in 0..200 {
                let d = p.backoff(attempt, None, &mut rng);
                assert!(
                    d >= exp / 2 && d <= exp,
                    "attempt {attempt}: {d:?} vs {exp:?}"
                );
            }
        }
        // The band's floor rises: attempt 5's shortest wait exceeds attempt 3's longest.
        let min5 = (0..200)
            .map(|_| p.backoff(5, None, &mut rng))
            .min()
            .unwrap();
        let max3 = (0..200)
            .map(|_| p.backoff(3, None, &mut rng))
            .max()
            .unwrap();
        assert!(min5 > max3);
    }

    #[test]
    fn backoff_honours_retry_after_and_is_capped() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(2);
        let d = p.backoff(1, Some(Duration::from_millis(700)), &mut rng);
        assert!(d >= Duration::from_millis(700) && d <= p.max_delay);
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(60)), &mut rng),
            p.max_delay
        );
        for attempt in [10, 31, 1000, u32::MAX] {
            assert!(p.backoff(attempt, None, &mut rng) <= p.max_delay);
        }
    }

    #[test]
    fn retry_after_parses_seconds_fractions_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after(" 0.25 "),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        let past = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(parse_retry_after(past), Some(Duration::ZERO));
        let future = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let d = parse_retry_after(&future).unwrap();
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30));
    }

    #[test]
    fn statuses_classify_as_the_policy_says() {
        let class = |c: u16| classify_status(StatusCode::from_u16(c).unwrap());
        for c in [200, 201, 204] {
            assert_eq!(class(c), StatusClass::Success, "{c}");
        }
        for c in [429, 500, 502, 503, 504] {
            assert_eq!(class(c), StatusClass::Retry, "{c}");
        }
        for c in [400, 401, 403, 404, 409, 413, 422] {
            assert_eq!(class(c), StatusClass::Reject, "{c}");
        }
    }
}
