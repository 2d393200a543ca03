//! Token-bucket rate limits. The time is handed in (a monotonic duration since any fixed
//! origin), so the limiter is deterministic under test.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// `n` requests per `period`; the bucket holds at most `n` tokens (a full period's burst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per period (>= 1).
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// Parse `100/s`, `10/m` (or `/min`), `5/h`.
    ///
    /// # Errors
    /// A message saying the expected form.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = || format!("{s:?} is not a rate; write it as N/s, N/m or N/h, e.g. \"100/s\"");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("{s:?}: a rate must allow at least 1 request"));
        }
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(Rate { count, period })
    }

    /// Bucket arithmetic is in integer "units": one token is `period` nanoseconds' worth,
    /// and `count` units accrue per nanosecond, so there is no floating-point rounding.
    fn token(self) -> u128 {
        self.period.as_nanos().max(1)
    }

    fn capacity(self) -> u128 {
        self.token() * u128::from(self.count)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "m",
            3600 => "h",
            _ => "period",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Units available (see [`Rate::token`]).
    units: u128,
    /// When `tokens` was last brought up to date.
    at: Duration,
}

/// Buckets by name (`rule:3`, `key:idp`). Names come from config rules and existing keys, so
/// the map stays small.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// Bucket state; the lock is never held across an await (this module is sync).
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Take one token from every named bucket, or from none: if any is empty, nothing is
    /// consumed and the first empty one is reported with the wait until its next token.
    ///
    /// # Errors
    /// `(scope, rate, wait)` of the exhausted bucket.
    pub fn take_all(
        &self,
        takes: &[(String, Rate, String)],
        now: Duration,
    ) -> Result<(), (String, Rate, Duration)> {
        if takes.is_empty() {
            return Ok(());
        }
        // A poisoned lock only means another thread panicked mid-update of plain numbers;
        // the data is still usable.
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, rate, scope) in takes {
            let b = map.entry(name.clone()).or_insert(Bucket {
                units: rate.capacity(),
                at: now,
            });
            let elapsed = now.saturating_sub(b.at).as_nanos();
            b.units = b
                .units
                .saturating_add(elapsed.saturating_mul(u128::from(rate.count)))
                .min(rate.capacity());
            b.at = b.at.max(now);
            if b.units < rate.token() {
                let missing = rate.token() - b.units;
                let wait_ns = missing.div_ceil(u128::from(rate.count));
                return Err((
                    scope.clone(),
                    *rate,
                    Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX)),
                ));
            }
        }
        for (name, rate, _) in takes {
            if let Some(b) = map.get_mut(name) {
                b.units = b.units.saturating_sub(rate.token());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(
            Rate::parse("100/s"),
            Ok(Rate {
                count: 100,
                period: Duration::from_secs(1)
            })
        );
        assert_eq!(Rate::parse("5/h").map(|r| r.to_string()), Ok("5/h".into()));
        assert_eq!(Rate::parse("10/min").map(|r| r.period.as_secs()), Ok(60));
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("fast").is_err());
        assert!(Rate::parse("1/d").is_err());
    }

    #[test]
    fn bucket_refills_and_reports_the_wait() -> Result<(), String> {
        let l = RateLimiter::default();
        let t = vec![("x".to_owned(), Rate::parse("2/s")?, "caller x".to_owned())];
        let t0 = Duration::from_secs(5);
        assert!(l.take_all(&t, t0).is_ok());
        assert!(l.take_all(&t, t0).is_ok());
        let Err((scope, _, wait)) = l.take_all(&t, t0) else {
            return Err("third take allowed".into());
        };
        assert_eq!(scope, "caller x");
        assert_eq!(wait, Duration::from_millis(500));
        assert!(l.take_all(&t, t0 + Duration::from_millis(499)).is_err());
        assert!(l.take_all(&t, t0 + Duration::from_millis(500)).is_ok());
        // Never more than a full bucket, however long it idled.
        let later = t0 + Duration::from_secs(3600);
        assert!(l.take_all(&t, later).is_ok());
        assert!(l.take_all(&t, later).is_ok());
        assert!(l.take_all(&t, later).is_err());
        Ok(())
    }
}
