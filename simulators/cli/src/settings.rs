//! Settings of a load run: command-line flags, an optional TOML file with the same
//! keys (flag names with `_` for `-`), defaults; flags override the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use mpn_sim::profile::Profile;
use mpn_sim::subscriber::Login;
use mpn_sim::traffic::{MAX_SERIAL, TrafficConfig};
use serde::Deserialize;

/// Every setting of `run` and `demo-load`. In a `--config` file each key is optional
/// and unknown keys are refused.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Kafka bootstrap servers of the deployment under test (`run` only).
    #[arg(long, help_heading = "Target (run)")]
    pub bootstrap: Option<String>,
    /// Input topic the engine consumes [default: mpn.payment-events]; dead letters are
    /// read back from `<topic>.dlq`.
    #[arg(long, help_heading = "Target (run)")]
    pub topic: Option<String>,
    /// The engine's gRPC address, host:port (`run` only).
    #[arg(long, help_heading = "Target (run)")]
    pub against: Option<String>,
    /// A subscriber credential `institution:login_id:secret` (repeatable; subscribers
    /// take them round robin and subscribe to every institution each one grants).
    #[arg(long, help_heading = "Target (run)")]
    #[serde(default)]
    pub login: Vec<String>,
    /// Partitions of the in-process input topic (`demo-load` only) [default: 6].
    #[arg(long, help_heading = "Target (demo-load)")]
    pub partitions: Option<i32>,

    /// Institutions in the traffic; rank r gets a share proportional to 1/r
    /// [default: 36].
    #[arg(long, help_heading = "Traffic")]
    pub institutions: Option<usize>,
    /// Seed of the generator: the same seed (and serial start) gives the same event
    /// stream [default: 1].
    #[arg(long, help_heading = "Traffic")]
    pub seed: Option<u64>,
    /// Serial numbers of transaction keys start after this one (0-99999998)
    /// [default: drawn at random, and written in the report]. The engine drops a key it
    /// has recently notified, so runs against the same engine need fresh serials; give
    /// a run's value again to repeat it exactly on a fresh engine.
    #[arg(long, help_heading = "Traffic")]
    pub serial_start: Option<u32>,
    /// Share of deliberately invalid records, 0-1 [default: 0.03].
    #[arg(long, help_heading = "Traffic")]
    pub invalid_ratio: Option<f64>,
    /// Events per second; the peak for `ramp` and `day` [default: 100].
    #[arg(long, help_heading = "Traffic")]
    pub rate: Option<f64>,
    /// Seconds to publish for [default: 60 for run, 10 for demo-load].
    #[arg(long, help_heading = "Traffic")]
    pub duration: Option<u64>,
    /// Shape of the rate over the run: constant, ramp (0 → rate) or day (a day
    /// compressed into the run; rate = peak) [default: constant].
    #[arg(long, help_heading = "Traffic")]
    pub profile: Option<Profile>,

    /// Simulated billing systems (durable gRPC subscribers) [default: 3].
    #[arg(long, help_heading = "Subscribers")]
    pub subscribers: Option<usize>,
    /// Each subscriber acknowledges a notification this long after receiving it
    /// (it keeps reading meanwhile, within the server's ack window) [default: 0].
    #[arg(long, help_heading = "Subscribers")]
    pub ack_delay_ms: Option<u64>,
    /// Subscriber 0 stops reading and acknowledging for this long, starting a third
    /// of the way into the run [default: 0 = never].
    #[arg(long, help_heading = "Subscribers")]
    pub stall_one_ms: Option<u64>,
    /// Every odd-numbered subscriber (subscriber 0 when there is only one)
    /// disconnects this often and resumes from its cursor [default: 0 = never].
    #[arg(long, help_heading = "Subscribers")]
    pub reconnect_every_secs: Option<u64>,
    /// After publishing, how long to wait for every expected notification before
    /// counting the missing ones as gaps [default: 30].
    #[arg(long, help_heading = "Subscribers")]
    pub drain_timeout_secs: Option<u64>,

    /// Directory for report.json and report.svg [default: ./mpn-sim-report].
    #[arg(long, help_heading = "Report")]
    pub out: Option<PathBuf>,
    /// No progress bars (they are also off when standard error is not a terminal).
    #[arg(long, help_heading = "Report")]
    #[serde(default)]
    pub no_progress: bool,
}

impl Settings {
    /// Reads a TOML settings file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}", path.display()))
    }

    /// These settings, with every one left unset taken from `file`.
    pub fn over(self, file: Settings) -> Settings {
        Settings {
            bootstrap: self.bootstrap.or(file.bootstrap),
            topic: self.topic.or(file.topic),
            against: self.against.or(file.against),
            login: if self.login.is_empty() {
                file.login
            } else {
                self.login
            },
            partitions: self.partitions.or(file.partitions),
            institutions: self.institutions.or(file.institutions),
            seed: self.seed.or(file.seed),
            serial_start: self.serial_start.or(file.serial_start),
            invalid_ratio: self.invalid_ratio.or(file.invalid_ratio),
            rate: self.rate.or(file.rate),
            duration: self.duration.or(file.duration),
            profile: self.profile.or(file.profile),
            subscribers: self.subscribers.or(file.subscribers),
            ack_delay_ms: self.ack_delay_ms.or(file.ack_delay_ms),
            stall_one_ms: self.stall_one_ms.or(file.stall_one_ms),
            reconnect_every_secs: self.reconnect_every_secs.or(file.reconnect_every_secs),
            drain_timeout_secs: self.drain_timeout_secs.or(file.drain_timeout_secs),
            out: self.out.or(file.out),
            no_progress: self.no_progress || file.no_progress,
        }
    }

    /// The options of a load run, defaults filled in and every value checked.
    pub fn load_options(&self, default_duration_secs: u64) -> anyhow::Result<LoadOptions> {
        let o = LoadOptions {
            institutions: self.institutions.unwrap_or(36),
            seed: self.seed.unwrap_or(1),
            serial_start: self
                .serial_start
                .unwrap_or_else(|| rand::random_range(0..MAX_SERIAL)),
            invalid_ratio: self.invalid_ratio.unwrap_or(0.03),
            rate: self.rate.unwrap_or(100.0),
            duration: Duration::from_secs(self.duration.unwrap_or(default_duration_secs)),
            profile: self.profile.unwrap_or_default(),
            subscribers: self.subscribers.unwrap_or(3),
            ack_delay: Duration::from_millis(self.ack_delay_ms.unwrap_or(0)),
            stall_one: Duration::from_millis(self.stall_one_ms.unwrap_or(0)),
            reconnect_every: Duration::from_secs(self.reconnect_every_secs.unwrap_or(0)),
            drain_timeout: Duration::from_secs(self.drain_timeout_secs.unwrap_or(30)),
            out: self
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("mpn-sim-report")),
            progress: !self.no_progress,
        };
        o.validate()?;
        Ok(o)
    }

    /// The deployment `run` targets.
    pub fn target(&self) -> anyhow::Result<Target> {
        if self.partitions.is_some() {
            bail!("--partitions is for demo-load (the topic of a deployment already exists)");
        }
        let bootstrap = self
            .bootstrap
            .clone()
            .context("--bootstrap is required (Kafka of the deployment under test)")?;
        let against = self
            .against
            .clone()
            .context("--against is required (the engine's gRPC address)")?;
        let logins = self
            .login
            .iter()
            .map(|l| parse_login(l))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if logins.is_empty() && self.subscribers.unwrap_or(3) > 0 {
            bail!("subscribers need credentials: give --login institution:login_id:secret");
        }
        Ok(Target {
            bootstrap,
            topic: self.topic(),
            against,
            logins,
        })
    }

    /// Refuses the settings that only `run` takes (demo-load makes its own).
    pub fn check_demo(&self) -> anyhow::Result<()> {
        for (set, flag) in [
            (self.bootstrap.is_some(), "--bootstrap"),
            (self.against.is_some(), "--against"),
            (!self.login.is_empty(), "--login"),
        ] {
            if set {
                bail!("{flag} is for run; demo-load starts its own broker and engine");
            }
        }
        match self.partitions {
            Some(p) if !(1..=1_000).contains(&p) => {
                bail!("--partitions must be between 1 and 1000 (got {p})")
            }
            _ => Ok(()),
        }
    }

    pub fn topic(&self) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| mpn_kafka::Config::default().input_topic)
    }
}

/// `institution:login_id:secret` (the secret may itself contain `:`).
pub fn parse_login(s: &str) -> anyhow::Result<Login> {
    let mut parts = s.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(i), Some(l), Some(secret)) if !i.is_empty() && !l.is_empty() => Ok(Login {
            institution: i.to_owned(),
            login_id: l.to_owned(),
            secret: secret.to_owned(),
        }),
        _ => bail!("--login must be institution:login_id:secret"),
    }
}

/// Where `run` sends traffic and whom its subscribers log in as.
#[derive(Debug, Clone)]
pub struct Target {
    pub bootstrap: String,
    pub topic: String,
    /// The engine's gRPC address.
    pub against: String,
    pub logins: Vec<Login>,
}

/// A load run's options, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    pub institutions: usize,
    pub seed: u64,
    pub serial_start: u32,
    pub invalid_ratio: f64,
    /// Events per second (the peak for ramp and day).
    pub rate: f64,
    pub duration: Duration,
    pub profile: Profile,
    pub subscribers: usize,
    pub ack_delay: Duration,
    /// Zero = no stall.
    pub stall_one: Duration,
    /// Zero = no reconnects.
    pub reconnect_every: Duration,
    pub drain_timeout: Duration,
    pub out: PathBuf,
    pub progress: bool,
}

impl LoadOptions {
    fn validate(&self) -> anyhow::Result<()> {
        if !(1..=100_000).contains(&self.institutions) {
            bail!(
                "--institutions must be between 1 and 100000 (got {})",
                self.institutions
            );
        }
        if self.serial_start >= MAX_SERIAL {
            bail!(
                "--serial-start must be below {MAX_SERIAL} (got {})",
                self.serial_start
            );
        }
        if !(0.0..=1.0).contains(&self.invalid_ratio) {
            bail!(
                "--invalid-ratio must be between 0 and 1 (got {})",
                self.invalid_ratio
            );
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1_000_000.0) {
            bail!(
                "--rate must be above 0 and at most 1000000 (got {})",
                self.rate
            );
        }
        if self.duration.is_zero() {
            bail!("--duration must be at least 1 second");
        }
        if self.subscribers > 10_000 {
            bail!(
                "--subscribers must be at most 10000 (got {})",
                self.subscribers
            );
        }
        Ok(())
    }

    /// The generator's settings: the same options give the same event stream.
    pub fn traffic(&self) -> TrafficConfig {
        TrafficConfig {
            institutions: self.institutions,
            seed: self.seed,
            invalid_ratio: self.invalid_ratio,
            serial_start: self.serial_start,
            ..TrafficConfig::default()
        }
    }

    /// Whether subscriber `index` disconnects every `reconnect_every`.
    pub fn reconnects(&self, index: usize) -> bool {
        !self.reconnect_every.is_zero() && (index % 2 == 1 || (self.subscribers == 1 && index == 0))
    }

    /// When subscriber 0 stalls (offset from the start of publishing) and for how long.
    pub fn stall(&self, index: usize) -> Option<(Duration, Duration)> {
        (index == 0 && !self.stall_one.is_zero()).then(|| (self.duration / 3, self.stall_one))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use clap::Parser;
    use mpn_sim::traffic::Generator;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        s: Settings,
    }

    fn flags(args: &[&str]) -> Settings {
        Cli::try_parse_from(std::iter::once("mpn-sim").chain(args.iter().copied()))
            .unwrap()
            .s
    }

    #[test]
    fn defaults() {
        let o = Settings::default().load_options(60).unwrap();
        assert_eq!(o.institutions, 36);
        assert_eq!(o.seed, 1);
        assert_eq!(o.rate, 100.0);
        assert_eq!(o.duration, Duration::from_secs(60));
        assert_eq!(o.profile, Profile::Constant);
        assert_eq!(o.subscribers, 3);
        assert_eq!(o.out, PathBuf::from("mpn-sim-report"));
        assert!(o.progress);
        assert!(o.serial_start < MAX_SERIAL);
        assert_eq!(o.stall(0), None);
        assert!(!o.reconnects(1));
    }

    #[test]
    fn flags_override_the_file() {
        let file: Settings = toml::from_str(
            r#"
            bootstrap = "k1:9092"
            against = "engine:50051"
            login = ["00200000:billing:s3cr:et"]
            rate = 250.5
            duration = 30
            profile = "day"
            seed = 9
            serial_start = 12
            subscribers = 5
            stall_one_ms = 2000
            reconnect_every_secs = 4
            "#,
        )
        .unwrap();
        let s = flags(&["--rate", "10", "--profile", "ramp", "--institutions", "7"]).over(file);
        let o = s.load_options(60).unwrap();
        assert_eq!(o.rate, 10.0);
        assert_eq!(o.profile, Profile::Ramp);
        assert_eq!(o.institutions, 7);
        assert_eq!(o.seed, 9);
        assert_eq!(o.serial_start, 12);
        assert_eq!(o.duration, Duration::from_secs(30));
        assert_eq!(
            o.stall(0),
            Some((Duration::from_secs(10), Duration::from_secs(2)))
        );
        assert!(o.reconnects(1) && o.reconnects(3) && !o.reconnects(0) && !o.reconnects(2));
        let t = s.target().unwrap();
        assert_eq!(t.bootstrap, "k1:9092");
        assert_eq!(t.topic, "mpn.payment-events");
        assert_eq!(t.logins[0].institution, "00200000");
        assert_eq!(t.logins[0].login_id, "billing");
        assert_eq!(t.logins[0].secret, "s3cr:et");
        assert!(s.check_demo().is_err());
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused() {
        assert!(toml::from_str::<Settings>("rates = 3").is_err());
        assert!(toml::from_str::<Settings>("profile = \"weekly\"").is_err());
        for bad in [
            &["--rate", "0"][..],
            &["--invalid-ratio", "1.5"],
            &["--institutions", "0"],
            &["--duration", "0"],
            &["--serial-start", "99999999"],
        ] {
            assert!(flags(bad).load_options(60).is_err(), "{bad:?}");
        }
        assert!(
            flags(&["--against", "x:1"]).target().is_err(),
            "no bootstrap"
        );
        assert!(parse_login("00200000:only-two").is_err());
        assert!(
            flags(&["--bootstrap", "b:1", "--against", "x:1"])
                .target()
                .is_err(),
            "subscribers without a login"
        );
        assert!(flags(&["--partitions", "0"]).check_demo().is_err());
        assert!(flags(&["--partitions", "4"]).check_demo().is_ok());
    }

    #[test]
    fn one_only_reconnecting_subscriber_is_subscriber_zero() {
        let o = flags(&["--subscribers", "1", "--reconnect-every-secs", "2"])
            .load_options(10)
            .unwrap();
        assert!(o.reconnects(0));
    }

    /// The same seed (and the same clock) gives byte-identical records; another seed
    /// does not.
    #[test]
    fn same_seed_same_event_stream() {
        let now = DateTime::from_timestamp(1_780_000_000, 0).unwrap();
        let stream = |args: &[&str]| {
            let o = flags(args).load_options(10).unwrap();
            let mut g = Generator::new(o.traffic());
            (0..2_000)
                .map(|_| {
                    let r = g.next_record_at(now);
                    (r.key, r.payload, r.content_type, r.fault)
                })
                .collect::<Vec<_>>()
        };
        let run = [
            "--seed",
            "42",
            "--invalid-ratio",
            "0.1",
            "--serial-start",
            "700",
        ];
        let a = stream(&run);
        assert_eq!(a, stream(&run));
        let mut other = run;
        other[1] = "43";
        assert_ne!(a, stream(&other));
        assert!(a.iter().any(|r| r.3.is_some()), "invalid records included");
    }
}
