//! Job output that outlives its pod: where each attempt's output lives in a bucket (a stream
//! per container and attempt, written in numbered chunks), and how it is read back in order.
//!
//! Pure: the layout, the chunks' names, and where a read of the kubelet's output resumes.
//! The archiver (`controller::archive`) writes through [`s3::Bucket`]; the CloudWatch Logs
//! endpoint and `barge logs` read through it.
//!
//! A stream's chunks are objects named `{root}{namespace}/{group}/{stream}/{chunk}` with `/`
//! and `%` percent-encoded inside group and stream, so that a namespace, a group and a
//! stream are each one level of the bucket's listing. A chunk's name says what a reader needs
//! without opening it: `{seq:010}-{first ms:013}-{last ms:013}-{lines}` and `-end` on the
//! stream's last. Its body is the kubelet's own lines (`RFC3339Nano timestamp`, a space, the
//! line), unchanged.

pub mod s3;

use chrono::{DateTime, TimeZone, Utc};

/// The log group AWS Batch writes to unless a job definition names another
/// (`logConfiguration.options.awslogs-group`).
pub const DEFAULT_GROUP: &str = "/aws/batch/job";

/// The container part of a single-container job's stream name, as AWS Batch names it.
pub const MAIN_CONTAINER: &str = "default";

/// Lines a chunk holds at most, so that a reader pages through a long stream a chunk at a
/// time and a writer holds one chunk in memory (CloudWatch Logs' own page is 10,000 events).
pub const CHUNK_LINES: usize = 10_000;
/// Bytes a chunk holds at most (CloudWatch Logs' largest page is 1 MB).
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// One stream: what a container printed in one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamId {
    pub namespace: String,
    pub group: String,
    pub name: String,
}

impl StreamId {
    /// The prefix every chunk of the stream starts with, under the archive's `root`.
    pub fn prefix(&self, root: &str) -> String {
        format!("{}{}", group_prefix(root, &self.namespace, &self.group), encode(&self.name)) + "/"
    }

    pub fn key(&self, root: &str, chunk: &Chunk) -> String {
        self.prefix(root) + &chunk.name()
    }
}

/// The prefix of a namespace's groups.
pub fn namespace_prefix(root: &str, namespace: &str) -> String {
    format!("{root}{namespace}/")
}

/// The prefix of a group's streams.
pub fn group_prefix(root: &str, namespace: &str, group: &str) -> String {
    format!("{}{}/", namespace_prefix(root, namespace), encode(group))
}

/// A stream's name, as AWS Batch names an attempt's: `{definition or job}/{container}/{task}`,
/// where the task is the attempt's pod (unique per job, attempt, child and node).
pub fn stream_name(definition_or_job: &str, container: &str, pod: &str) -> String {
    format!("{definition_or_job}/{container}/{pod}")
}

/// Annotations a pod carries for the archiver: its containers' log group (when not
/// [`DEFAULT_GROUP`]), the first part of their streams' names, and which container's stream
/// is `.../default/...` (a task's containers each have their own name there, as on AWS).
pub const ANNOTATION_GROUP: &str = "barge.dev/log-group";
pub const ANNOTATION_NAME: &str = "barge.dev/log-name";
pub const ANNOTATION_MAIN: &str = "barge.dev/log-main";

/// The stream a container of a pod writes to, from the pod's annotations (none for a pod
/// Barge did not mark).
pub fn container_stream(
    namespace: &str,
    pod: &str,
    annotations: &std::collections::BTreeMap<String, String>,
    container: &str,
) -> Option<StreamId> {
    let name = annotations.get(ANNOTATION_NAME)?;
    let part = match annotations.get(ANNOTATION_MAIN) {
        Some(main) if main == container => MAIN_CONTAINER,
        _ => container,
    };
    Some(StreamId {
        namespace: namespace.to_string(),
        group: annotations.get(ANNOTATION_GROUP).map_or(DEFAULT_GROUP, String::as_str).to_string(),
        name: stream_name(name, part, pod),
    })
}

/// The log group a container's `logConfiguration` names (`awslogs-group` of the `awslogs`
/// driver), if any.
pub fn configured_group(log: Option<&crate::api::container::LogConfiguration>) -> Option<&str> {
    let log = log.filter(|l| l.log_driver == "awslogs")?;
    log.options.get("awslogs-group").map(String::as_str).filter(|g| !g.is_empty())
}

/// The first part of a container's stream names its `logConfiguration` asks for
/// (`awslogs-stream-prefix` of the `awslogs` driver: `<prefix>/<container>/<task>`), if any.
pub fn configured_stream_prefix(log: Option<&crate::api::container::LogConfiguration>) -> Option<&str> {
    let log = log.filter(|l| l.log_driver == "awslogs")?;
    log.options.get("awslogs-stream-prefix").map(String::as_str).filter(|p| !p.is_empty())
}

/// One level of the bucket's listing for a name that may hold `/`.
pub fn encode(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

pub fn decode(level: &str) -> String {
    level.replace("%2F", "/").replace("%25", "%")
}

/// What a chunk's name says of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Its place in the stream, from 0.
    pub seq: u32,
    /// Its first and last lines' times, in milliseconds since the epoch (0 when empty).
    pub first_ms: i64,
    pub last_ms: i64,
    pub lines: u32,
    /// The stream's last chunk: the container ended and all it printed is archived.
    pub end: bool,
}

impl Chunk {
    pub fn name(&self) -> String {
        let end = if self.end { "-end" } else { "" };
        format!("{:010}-{:013}-{:013}-{}{end}", self.seq, self.first_ms, self.last_ms, self.lines)
    }

    /// The chunk a name (the last level of its key) describes, if it is one.
    pub fn parse(name: &str) -> Option<Chunk> {
        let (name, end) = match name.strip_suffix("-end") {
            Some(n) => (n, true),
            None => (name, false),
        };
        let mut parts = name.splitn(4, '-');
        let seq = parts.next()?.parse().ok()?;
        let first_ms = parts.next()?.parse().ok()?;
        let last_ms = parts.next()?.parse().ok()?;
        let lines = parts.next()?.parse().ok()?;
        Some(Chunk { seq, first_ms, last_ms, lines, end })
    }
}

/// A line as the kubelet gives it with `timestamps=true`: its time in nanoseconds since the
/// epoch and the line itself.
pub fn parse_line(line: &str) -> Option<(i64, &str)> {
    let (ts, message) = line.split_once(' ').unwrap_or((line, ""));
    let t = DateTime::parse_from_rfc3339(ts).ok()?;
    Some((t.timestamp_nanos_opt()?, message))
}

/// The lines of a chunk's body, each with its time in nanoseconds; a line whose time cannot
/// be read keeps the previous line's (the kubelet always writes one).
pub fn events(body: &str) -> impl Iterator<Item = (i64, &str)> {
    let mut last = 0;
    body.lines().map(move |l| match parse_line(l) {
        Some((t, m)) => {
            last = t;
            (t, m)
        }
        None => (last, l),
    })
}

/// Where reading a container's output resumes: the last archived line's time and how many
/// archived lines carried exactly that time, the next chunk's number, and whether the
/// stream ended. The kubelet's `sinceTime` counts whole seconds, so a read from
/// [`Cursor::since`] gives some archived lines again; [`Cursor::admit`] skips them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub last_ns: Option<i64>,
    pub ties: u32,
    pub next_seq: u32,
    pub end: bool,
    /// Lines at `last_ns` still to skip in the current read.
    skip: u32,
}

impl Cursor {
    /// Where an archived stream resumes: after its chunks, and the last line of the last
    /// non-empty one (its body), with as many lines as share that line's time.
    pub fn resume(chunks: &[Chunk], last_body: Option<&str>) -> Cursor {
        let mut c = Cursor {
            next_seq: chunks.iter().map(|c| c.seq + 1).max().unwrap_or(0),
            end: chunks.iter().any(|c| c.end),
            ..Cursor::default()
        };
        if let Some(body) = last_body {
            let times: Vec<i64> = events(body).map(|(t, _)| t).collect();
            if let Some(&last) = times.last() {
                c.last_ns = Some(last);
                c.ties = times.iter().rev().take_while(|&&t| t == last).count() as u32;
            }
        }
        c
    }

    /// The `sinceTime` to read from: the second of the last archived line (none: all).
    pub fn since(&self) -> Option<DateTime<Utc>> {
        let ns = self.last_ns?;
        Utc.timestamp_opt(ns.div_euclid(1_000_000_000), 0).single()
    }

    /// Starts a read from [`Cursor::since`].
    pub fn begin_read(&mut self) {
        self.skip = self.ties;
    }

    /// Whether a line of time `ns` in a read is new (not archived yet); records it if so.
    pub fn admit(&mut self, ns: i64) -> bool {
        match self.last_ns {
            Some(last) if ns < last => return false,
            Some(last) if ns == last && self.skip > 0 => {
                self.skip -= 1;
                return false;
            }
            Some(last) if ns == last => self.ties += 1,
            _ => {
                self.last_ns = Some(ns);
                self.ties = 1;
                self.skip = 0;
            }
        }
        true
    }
}

/// Lines gathered into chunks as they are read: a chunk is full at [`CHUNK_LINES`] lines
/// or [`CHUNK_BYTES`] bytes.
#[derive(Debug, Default)]
pub struct ChunkBuilder {
    body: String,
    first_ns: Option<i64>,
    last_ns: i64,
    lines: u32,
}

impl ChunkBuilder {
    /// Adds a line (without its newline) read at `ns`.
    pub fn push(&mut self, ns: i64, line: &str) {
        self.first_ns.get_or_insert(ns);
        self.last_ns = ns;
        self.body.push_str(line);
        self.body.push('\n');
        self.lines += 1;
    }

    pub fn full(&self) -> bool {
        self.lines as usize >= CHUNK_LINES || self.body.len() >= CHUNK_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// The chunk numbered `seq` and its body; the builder starts again empty.
    pub fn take(&mut self, seq: u32, end: bool) -> (Chunk, String) {
        let ms = |ns: i64| ns.div_euclid(1_000_000);
        let chunk = Chunk {
            seq,
            first_ms: self.first_ns.map_or(0, ms),
            last_ms: if self.lines == 0 { 0 } else { ms(self.last_ns) },
            lines: self.lines,
            end,
        };
        let body = std::mem::take(&mut self.body);
        *self = ChunkBuilder::default();
        (chunk, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ns: i64, text: &str) -> String {
        let t = Utc.timestamp_nanos(ns);
        format!("{} {text}", t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
    }

    #[test]
    fn a_chunk_name_says_what_it_holds_and_reads_back() {
        let c =
            Chunk { seq: 7, first_ms: 1_765_000_000_123, last_ms: 1_765_000_004_000, lines: 42, end: true };
        assert_eq!(c.name(), "0000000007-1765000000123-1765000004000-42-end");
        assert_eq!(Chunk::parse(&c.name()), Some(c.clone()));
        let open = Chunk { end: false, ..c };
        assert_eq!(Chunk::parse(&open.name()), Some(open));
        assert_eq!(Chunk::parse("notes.txt"), None);
    }

    #[test]
    fn names_with_slashes_are_one_level_of_the_listing() {
        let s = StreamId {
            namespace: "team-a".into(),
            group: DEFAULT_GROUP.into(),
            name: stream_name("etl", MAIN_CONTAINER, "etl-1a2b3c4d-1"),
        };
        assert_eq!(s.prefix("logs/"), "logs/team-a/%2Faws%2Fbatch%2Fjob/etl%2Fdefault%2Fetl-1a2b3c4d-1/");
        assert_eq!(decode(&encode("a/b%2Fc")), "a/b%2Fc");
    }

    #[test]
    fn lines_read_again_from_the_same_second_are_skipped_once() {
        let base = 1_765_000_000_000_000_000;
        // Archived: two lines at `base + 5`, the last two.
        let body = [line(base + 1, "a"), line(base + 5, "b"), line(base + 5, "c")].join("\n");
        let chunks = [Chunk { seq: 0, first_ms: 0, last_ms: 0, lines: 3, end: false }];
        let mut c = Cursor::resume(&chunks, Some(&body));
        assert_eq!((c.last_ns, c.ties, c.next_seq, c.end), (Some(base + 5), 2, 1, false));
        assert_eq!(c.since(), Utc.timestamp_opt(1_765_000_000, 0).single());
        // The kubelet gives the whole second again, then a third line at the same time.
        c.begin_read();
        let read = [base + 1, base + 5, base + 5, base + 5, base + 9];
        let new: Vec<bool> = read.iter().map(|&t| c.admit(t)).collect();
        assert_eq!(new, [false, false, false, true, true]);
        assert_eq!((c.last_ns, c.ties), (Some(base + 9), 1));
    }

    #[test]
    fn a_fresh_cursor_admits_everything_and_reads_from_the_start() {
        let mut c = Cursor::default();
        assert_eq!(c.since(), None);
        c.begin_read();
        assert!(c.admit(10) && c.admit(10) && c.admit(11));
        assert_eq!((c.last_ns, c.ties), (Some(11), 1));
    }

    #[test]
    fn a_chunk_fills_at_its_line_count() {
        let mut b = ChunkBuilder::default();
        for i in 0..CHUNK_LINES as i64 {
            assert!(!b.full());
            b.push(1_000_000 * (i + 1), "x");
        }
        assert!(b.full());
        let (chunk, body) = b.take(3, false);
        assert_eq!(
            (chunk.seq, chunk.first_ms, chunk.last_ms, chunk.lines),
            (3, 1, CHUNK_LINES as i64, 10_000)
        );
        assert_eq!(body.lines().count(), CHUNK_LINES);
        assert!(b.is_empty());
    }

    #[test]
    fn events_keep_the_kubelets_times() {
        let body = format!("{}\n{}\n", line(2_000_000, "one two"), line(3_000_000, ""));
        let e: Vec<(i64, &str)> = events(&body).collect();
        assert_eq!(e, [(2_000_000, "one two"), (3_000_000, "")]);
    }
}
