//! Rate profiles of a load run: how the publishing rate moves over the run.
//!
//! A profile is a pure function of the run's progress: [`rate_at`] gives the share of
//! the configured (peak) rate at a fraction of the run, so a run of any length has the
//! same shape. The shapes and the reasons for them are in docs/simulator.md.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The shape of the publishing rate over a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// The configured rate from start to end.
    #[default]
    Constant,
    /// Linear from 0 at the start to the configured rate at the end.
    Ramp,
    /// One day compressed into the run (see [`DAY`]); the configured rate is the
    /// day's peak.
    Day,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Constant, Profile::Ramp, Profile::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Constant => "constant",
            Profile::Ramp => "ramp",
            Profile::Day => "day",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown profile {s:?}: expected constant, ramp or day"))
    }
}

/// The day profile: (hour of the day in JST, share of the peak rate), linearly
/// interpolated. Night trough, a morning climb as ATMs and counters open, a daytime
/// plateau, a burst before the 15:00 counter close (the same-day cut-off that a
/// payment deadline piles up against), a long evening of internet banking, then the
/// night again. Its mean is [`DAY_MEAN`] of the peak.
pub const DAY: [(f64, f64); 12] = [
    (0.0, 0.06),
    (3.0, 0.02),
    (6.0, 0.04),
    (8.0, 0.30),
    (9.0, 0.55),
    (14.0, 0.65),
    (14.5, 1.00),
    (15.0, 1.00),
    (15.5, 0.50),
    (20.0, 0.45),
    (22.0, 0.25),
    (24.0, 0.06),
];

/// Mean share of the peak over the day profile (the area under [`DAY`] / 24 h):
/// a day profile run publishes about this fraction of `rate × duration` events.
pub const DAY_MEAN: f64 = 8.41 / 24.0;

/// Share of the configured rate (0.0-1.0) at `t_fraction` of the run (0.0 = start,
/// 1.0 = end; values outside are clamped).
pub fn rate_at(profile: Profile, t_fraction: f64) -> f64 {
    let t = if t_fraction.is_nan() {
        0.0
    } else {
        t_fraction.clamp(0.0, 1.0)
    };
    match profile {
        Profile::Constant => 1.0,
        Profile::Ramp => t,
        Profile::Day => {
            let hour = t * 24.0;
            DAY.windows(2)
                .find(|w| hour <= w[1].0)
                .map(|w| {
                    let ((h0, r0), (h1, r1)) = (w[0], w[1]);
                    r0 + (r1 - r0) * (hour - h0) / (h1 - h0)
                })
                .unwrap_or(DAY[DAY.len() - 1].1)
        }
    }
}

/// Events a run of `duration_secs` at `rate` (peak) events per second publishes under
/// `profile` (the integral of the rate; for progress bars and estimates).
pub fn expected_events(profile: Profile, rate: f64, duration_secs: f64) -> f64 {
    let mean = match profile {
        Profile::Constant => 1.0,
        Profile::Ramp => 0.5,
        Profile::Day => DAY_MEAN,
    };
    rate * duration_secs * mean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean(profile: Profile) -> f64 {
        let n = 240_000;
        (0..n)
            .map(|i| rate_at(profile, (i as f64 + 0.5) / n as f64))
            .sum::<f64>()
            / n as f64
    }

    #[test]
    fn constant_is_flat_and_ramp_is_linear() {
        for t in [0.0, 0.25, 0.5, 1.0] {
            assert_eq!(rate_at(Profile::Constant, t), 1.0);
            assert!((rate_at(Profile::Ramp, t) - t).abs() < 1e-12);
        }
        assert_eq!(rate_at(Profile::Ramp, -1.0), 0.0);
        assert_eq!(rate_at(Profile::Ramp, 2.0), 1.0);
        assert_eq!(rate_at(Profile::Ramp, f64::NAN), 0.0);
    }

    #[test]
    fn day_has_trough_plateau_and_afternoon_peak() {
        let at = |hour: f64| rate_at(Profile::Day, hour / 24.0);
        // Night trough.
        assert!(at(3.0) <= 0.05, "{}", at(3.0));
        assert!(at(0.0) < 0.1 && at(23.9) < 0.1);
        // Daytime plateau, far above the night.
        for h in [9.5, 11.0, 13.0] {
            assert!((0.5..0.7).contains(&at(h)), "{h}: {}", at(h));
        }
        // The peak is the deadline burst before 15:00, and it is the configured rate.
        let (peak_hour, peak) = (0..2400)
            .map(|i| (i as f64 / 100.0, at(i as f64 / 100.0)))
            .fold((0.0, 0.0), |a, b| if b.1 > a.1 { b } else { a });
        assert_eq!(peak, 1.0);
        assert!((14.5..=15.0).contains(&peak_hour), "{peak_hour}");
        // Every value is a share of the peak, and the day is continuous at its ends.
        for i in 0..=1000 {
            let r = at(i as f64 * 0.024);
            assert!((0.0..=1.0).contains(&r));
        }
        assert_eq!(at(0.0), at(24.0));
    }

    #[test]
    fn means_match_the_documented_constants() {
        assert!((mean(Profile::Constant) - 1.0).abs() < 1e-9);
        assert!((mean(Profile::Ramp) - 0.5).abs() < 1e-6);
        assert!((mean(Profile::Day) - DAY_MEAN).abs() < 1e-4);
        assert!((expected_events(Profile::Day, 100.0, 60.0) - 6_000.0 * DAY_MEAN).abs() < 1e-9);
    }

    #[test]
    fn names_round_trip() {
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>().unwrap(), p);
        }
        assert!("weekly".parse::<Profile>().is_err());
    }
}
