//! The command line: subcommands `send`, `verify`, `stats`, `bench`, `subscribe`, their flags (each also an
//! environment variable where scripts benefit), and the parsers for targets and durations.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Command line of the `publisher` binary.
#[derive(Debug, Parser)]
#[command(
    name = "publisher",
    version,
    about = "Load generator, safe-retrying client and verifier for an aggregator cluster",
    long_about = "Load generator, safe-retrying client and verifier for an aggregator cluster.\n\n\
        Talks HTTP/JSON to any number of nodes. Re-sending is safe: the cluster deduplicates on \
        (topic, event_id), so a batch retried after a lost answer is never stored twice; its \
        events come back as `duplicate` with the original's stamp."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log filter for diagnostics on stderr (tracing EnvFilter syntax).
    #[arg(long, global = true, env = "PUBLISHER_LOG", default_value = "warn")]
    pub log_level: String,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish a generated workload, retrying safely, and report counts and latency.
    #[command(
        long_about = "Publish a generated workload and report what the cluster answered.\n\n\
        Events are realistic log records (level, service, message, fields) with UUID v4 ids and \
        RFC 3339 timestamps, spread over --topics topics; a share --duplicates of the sends repeat \
        an earlier event exactly. Requests are spread over all targets; with --prefer-leader each \
        request goes to the known leader first (saving a follower's forwarding hop). Connection errors, \
        timeouts, 429 and 5xx (503 included) are retried with the SAME events, with exponential \
        backoff and jitter (at least Retry-After), on another target, within --max-attempts and \
        --request-deadline. This is safe because the cluster deduplicates on (topic, event_id): \
        a retry of a batch that was in fact committed is answered `duplicate`, never stored \
        twice. Other 4xx answers are not retried and count as rejected.\n\n\
        Exit status: 0 when every event was acknowledged, 1 otherwise, 2 on a usage or I/O error."
    )]
    Send(SendArgs),
    /// Wait for convergence, then check every acknowledged event is stored exactly once on every node.
    #[command(long_about = "Check a cluster after a run.\n\n\
        Waits (up to --timeout) until every node reports the same applied index and digest \
        (GET /digest), then reads every node's own state (consistency=eventual): the counters \
        invariant received == unique_processed + duplicate_dropped must hold, no key may be stored \
        twice, every key acknowledged in --history must be present exactly once with the stamp \
        the cluster acknowledged, and with --expect-unique N unique_processed must equal N.\n\n\
        Exit status: 0 when everything holds, 1 on any violation or when the nodes do not converge \
        in time, 2 on a usage or I/O error.")]
    Verify(VerifyArgs),
    /// Print a table of every node: role, term, applied index, counters, lag, digest.
    Stats(StatsArgs),
    /// Run the benchmark scenarios against an existing cluster and print a markdown table.
    Bench(BenchArgs),
    /// Follow a topic pattern live (Server-Sent Events), resuming on another node when one fails.
    #[command(
        long_about = "Follow a topic pattern live (GET /subscribe, Server-Sent Events).\n\n\
        Prints one line per event (`CURSOR TOPIC SOURCE EVENT_ID`, or the event's JSON with \
        --json). When a node fails, ends the stream or goes silent for --stall, reconnects to the \
        next target with Last-Event-ID set to the last cursor received, so the stream continues \
        right after it on any node. With --verify-history, checks on exit that every acknowledged \
        event of a matching topic in that `send --history` file arrived exactly once, in commit \
        order, and prints ack-to-delivery latency.\n\n\
        With --consumer NAME, reads through a durable consumer instead (next + one cumulative ack \
        per batch): at least once, in commit order, resuming after the last acknowledged batch on \
        any node.\n\n\
        Exit status: 0 when done (and the check holds), 1 when the check fails, 2 on a usage error \
        or a request every node refuses (a bad pattern or cursor)."
    )]
    Subscribe(SubscribeArgs),
}

/// Where the cluster is.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Node base URLs, comma separated (`http://` is added when missing; `https://` for a
    /// node with --tls-cert, see --ca-cert).
    #[arg(long, env = "PUBLISHER_TARGETS", value_delimiter = ',', required = true, value_parser = parse_target)]
    pub targets: Vec<String>,
    /// API token, sent as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "PUBLISHER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM bundle of the CA(s) that signed the nodes' --tls-cert, for https:// targets. The
    /// publisher trusts no other certificate authority.
    #[arg(long, env = "PUBLISHER_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

/// How progress is shown while sending.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, periodic lines otherwise.
    Auto,
    /// Always a bar.
    Bar,
    /// Plain lines every two seconds.
    Lines,
    /// Nothing until the report.
    Off,
}

/// `publisher send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub conn: TargetArgs,
    /// Sends in total, repeats included.
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Share of sends that repeat an earlier event exactly (0.0 to 1.0).
    #[arg(long, default_value_t = 0.3, value_parser = parse_share)]
    pub duplicates: f64,
    /// Number of topics the events are spread over.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub topics: u32,
    /// Events per request.
    #[arg(long, default_value_t = 100, value_parser = parse_positive)]
    pub batch: usize,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 16, value_parser = parse_positive)]
    pub concurrency: usize,
    /// Offered load in events per second (default: as fast as acknowledgements allow).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// RNG seed: the same seed generates the same ids, payloads and repeats.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The events' `source` (producer name); `seq` counts per run from 1.
    #[arg(long, default_value = "publisher")]
    pub source: String,
    /// Topic names are `<prefix>.<service>`.
    #[arg(long, default_value = "logs")]
    pub topic_prefix: String,
    /// Write one JSON line per request (keys, target, outcome, stamps, times) to this file.
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Write the final report as JSON to this file.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// Attempts per request, the first included.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// No new attempt of a request starts after this long since its first (e.g. 20s, 500ms).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub request_deadline: Duration,
    /// Timeout of one attempt.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub attempt_timeout: Duration,
    /// Progress display on stderr.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Send each request to the known leader (learnt from answers' `leader_id` and the targets'
    /// `/stats`) instead of round robin; retries still rotate.
    #[arg(long)]
    pub prefer_leader: bool,
}

/// `publisher verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub conn: TargetArgs,
    /// History file of a `send --history` run to check against (repeat the flag for several runs).
    #[arg(long)]
    pub history: Vec<PathBuf>,
    /// Require `unique_processed` to equal N on every node (a fresh cluster; N = distinct keys sent).
    #[arg(long)]
    pub expect_unique: Option<u64>,
    /// How long to wait for the nodes to converge.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `publisher stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub conn: TargetArgs,
    /// Print the nodes' answers as a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Per-node request timeout.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `publisher bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub conn: TargetArgs,
    /// Also write the markdown table to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Multiply every scenario's event count (e.g. 0.1 for a quick run).
    #[arg(long, default_value_t = 1.0, value_parser = parse_rate)]
    pub scale: f64,
    /// Pause between scenarios (e.g. `10s`, `0s`): a heavy scenario leaves the nodes flushing
    /// and compacting what it wrote, and the next one would otherwise measure that too.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Also write each scenario's history (one JSON line per request, as `send --history`)
    /// into this directory, to find where a slow request fell.
    #[arg(long)]
    pub history_dir: Option<PathBuf>,
}

/// `publisher subscribe`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    #[command(flatten)]
    pub conn: TargetArgs,
    /// Topic pattern: `.` or `/` separated segments, `*` one segment, `>` the rest (e.g. `logs.>`).
    #[arg(long)]
    pub topic: String,
    /// Only this producer's events.
    #[arg(long)]
    pub source: Option<String>,
    /// Where to start: `earliest`, `latest`, a cursor, or an RFC 3339 time.
    #[arg(long, default_value = "latest")]
    pub from: String,
    /// `linearizable` (the leader confirms each read point) or `eventual` (any node's own state).
    #[arg(long)]
    pub consistency: Option<String>,
    /// Print each event's JSON on one line (NDJSON) instead of a summary line.
    #[arg(long)]
    pub json: bool,
    /// Print nothing per event (for checks and benchmarks).
    #[arg(long, conflicts_with = "json")]
    pub quiet: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub max_events: Option<u64>,
    /// Stop once no event arrived for this long (e.g. 5s).
    #[arg(long, value_parser = parse_duration)]
    pub idle_exit: Option<Duration>,
    /// Stop after this long in all (always bounded: default one hour).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub duration: Duration,
    /// A stream with no byte (not even a heartbeat) for this long is taken as dead and
    /// reconnected elsewhere; keep it above the nodes' --subscribe-heartbeat-ms.
    #[arg(long, default_value = "45s", value_parser = parse_duration)]
    pub stall: Duration,
    /// When stopped, check against this `send --history` file that every acknowledged event of
    /// a matching topic arrived exactly once, in commit order; exit 1 otherwise. With
    /// --consumer: at least once, in commit order once repeats are dropped by event key, and
    /// repeats only after a failover or a redelivery.
    #[arg(long)]
    pub verify_history: Option<PathBuf>,
    /// Read through this durable consumer (created from --topic, --source, --from and
    /// --ack-wait when it does not exist) with `next`, acknowledging each batch with one
    /// cumulative ack; resumes after the last acknowledged batch on any node.
    #[arg(long)]
    pub consumer: Option<String>,
    /// With --consumer: the consumer's ack wait when it is created (`<digits>ms|s|m`).
    #[arg(long, requires = "consumer")]
    pub ack_wait: Option<String>,
    /// Read the stream of the first target without parsing it and count its bytes only: the
    /// idle-client baseline of a benchmark (what the node's side of a fan-out costs when the
    /// subscribers do next to nothing). No reconnect, no check.
    #[arg(long, conflicts_with_all = ["json", "verify_history", "consumer", "max_events"])]
    pub discard: bool,
}

/// Normalizes a target to a base URL without a trailing slash, adding `http://` when missing.
pub fn parse_target(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty target".into());
    }
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| format!("bad target {s:?}: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "bad target {s:?}: only http:// and https:// are supported"
        ));
    }
    if url.host_str().is_none() {
        return Err(format!("bad target {s:?}: no host"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Parses `500ms`, `2s`, `1.5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 500ms, 20s, 2m)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("bad duration {s:?}"))
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0.0 and 1.0")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_normalized() {
        assert_eq!(
            parse_target("127.0.0.1:7001").unwrap(),
            "http://127.0.0.1:7001"
        );
        assert_eq!(
            parse_target(" http://127.0.0.2:7000/ ").unwrap(),
            "http://127.0.0.2:7000"
        );
        assert_eq!(
            parse_target("http://h:1/prefix/").unwrap(),
            "http://h:1/prefix"
        );
        assert!(parse_target("").is_err());
        assert_eq!(
            parse_target("https://127.0.0.1:7001/").unwrap(),
            "https://127.0.0.1:7001"
        );
        assert!(parse_target("ftp://127.0.0.1:7001").is_err());
        assert!(parse_target("http://").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        for bad in ["", "s", "5x", "-1s", "fast"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_issue_command_line_parses() {
        let cli = Cli::try_parse_from([
            "publisher",
            "send",
            "--targets",
            "http://127.0.0.1:7001,http://127.0.0.1:7002,http://127.0.0.1:7003",
            "--events",
            "20000",
            "--duplicates",
            "0.3",
            "--topics",
            "5",
            "--batch",
            "100",
            "--concurrency",
            "16",
            "--rate",
            "5000",
            "--seed",
            "42",
            "--source",
            "svc",
            "--token",
            "T",
            "--history",
            "h.jsonl",
            "--report-json",
            "r.json",
            "--prefer-leader",
        ])
        .unwrap();
        let Command::Send(a) = cli.command else {
            panic!("not send")
        };
        assert_eq!(a.conn.targets.len(), 3);
        assert_eq!(
            (a.events, a.topics, a.batch, a.concurrency),
            (20_000, 5, 100, 16)
        );
        assert_eq!((a.rate, a.seed), (Some(5000.0), Some(42)));
        assert!(a.prefer_leader);
        assert!(Cli::try_parse_from([
            "publisher",
            "send",
            "--targets",
            "x:1",
            "--duplicates",
            "1.5"
        ])
        .is_err());
        assert!(
            Cli::try_parse_from(["publisher", "send", "--targets", "x:1", "--batch", "0"]).is_err()
        );
    }
}
