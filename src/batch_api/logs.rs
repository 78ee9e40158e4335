//! CloudWatch Logs' read operations over the log archive, on the same endpoint and keys as
//! the AWS Batch API (awsJson1.1: `POST /` with `X-Amz-Target: Logs_20140328.<operation>`,
//! signed for the service `logs`): GetLogEvents, FilterLogEvents, DescribeLogStreams and
//! DescribeLogGroups, so that `aws logs`, boto3 and the tools that read an AWS Batch job's
//! output read Barge's. A key reads its own namespace's streams only: another namespace's
//! do not exist for it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{ApiError, ApiResult, Context, Principal};
use crate::archive::s3::{Bucket, Listed, StreamListing};
use crate::archive::{StreamId, events};

/// The prefix of CloudWatch Logs' `X-Amz-Target`s.
pub const TARGET_PREFIX: &str = "Logs_20140328.";

/// CloudWatch Logs' page limits: events (and bytes of them) a call returns at most, streams
/// and groups a describe returns at most.
const MAX_EVENTS: usize = 10_000;
const MAX_BYTES: usize = 1_048_576;
const MAX_DESCRIBED: usize = 50;
/// FilterLogEvents' longest pattern (CloudWatch Logs' own limit).
const MAX_PATTERN: usize = 1024;
/// Bytes of chunks one FilterLogEvents call reads at most before it answers with what it
/// found and a token to go on (CloudWatch Logs does the same with a time budget).
const FILTER_SCAN_BYTES: usize = 64 * 1024 * 1024;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(hyper::StatusCode::BAD_REQUEST, "InvalidParameterException", message)
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(hyper::StatusCode::BAD_REQUEST, "ResourceNotFoundException", message)
}

/// Runs the CloudWatch Logs operation `operation` (the target after its prefix).
pub async fn route(ctx: &Context, who: &Principal, operation: &str, body: &[u8]) -> ApiResult<Vec<u8>> {
    let Some(bucket) = &ctx.archive else {
        return Err(not_found(
            "no log archive is configured: the operator keeps no output (see the README's \"Job output\")",
        ));
    };
    let ns = who.namespace.as_str();
    match operation {
        "GetLogEvents" => super::reply(get_log_events(bucket, ns, input(body)?).await?),
        "FilterLogEvents" => super::reply(filter_log_events(bucket, ns, input(body)?).await?),
        "DescribeLogStreams" => super::reply(describe_log_streams(ctx, bucket, ns, input(body)?).await?),
        "DescribeLogGroups" => super::reply(describe_log_groups(ctx, bucket, ns, input(body)?).await?),
        other => Err(ApiError::new(
            hyper::StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            format!(
                "{other} is not a CloudWatch Logs operation Barge serves (GetLogEvents, FilterLogEvents, DescribeLogStreams, DescribeLogGroups)"
            ),
        )),
    }
}

fn input<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    super::parse(body).map_err(|e| invalid(e.message))
}

/// A log group by name or ARN (`logGroupIdentifier`), checked.
fn group_name(name: Option<String>, identifier: Option<String>) -> ApiResult<String> {
    let group = match (name, identifier) {
        (Some(n), None) => n,
        (None, Some(id)) => match id.strip_prefix("arn:") {
            Some(_) => id
                .split_once(":log-group:")
                .map(|(_, g)| g.trim_end_matches(":*").to_string())
                .ok_or_else(|| invalid("logGroupIdentifier is not a log group's ARN"))?,
            None => id,
        },
        (Some(_), Some(_)) => return Err(invalid("give logGroupName or logGroupIdentifier, not both")),
        (None, None) => return Err(invalid("logGroupName is required")),
    };
    check_name("logGroupName", &group, 512)?;
    Ok(group)
}

/// CloudWatch Logs' naming rules for a group or stream, and no `..`.
fn check_name(what: &str, name: &str, max: usize) -> ApiResult<()> {
    if name.is_empty() || name.len() > max {
        return Err(invalid(format!("{what} must be 1 to {max} characters")));
    }
    if name.contains([':', '*']) || name.contains("..") || name.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{what} {name:?} holds a character or sequence it may not (':', '*', '..')"
        )));
    }
    Ok(())
}

fn check_limit(limit: Option<i32>, max: usize) -> ApiResult<usize> {
    match limit {
        None => Ok(max),
        Some(n) if n >= 1 && n as usize <= max => Ok(n as usize),
        Some(n) => Err(invalid(format!("limit {n} is out of range: 1 to {max}"))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetLogEventsInput {
    log_group_name: Option<String>,
    log_group_identifier: Option<String>,
    log_stream_name: String,
    start_time: Option<i64>,
    end_time: Option<i64>,
    next_token: Option<String>,
    limit: Option<i32>,
    #[serde(default)]
    start_from_head: bool,
    #[allow(dead_code)]
    unmask: Option<bool>,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutputEvent {
    timestamp: i64,
    message: String,
    ingestion_time: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetLogEventsOutput {
    events: Vec<OutputEvent>,
    next_forward_token: String,
    next_backward_token: String,
}

/// A place in a stream: before the event of this index (counted from the stream's first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    Forward(u64),
    Backward(u64),
}

impl Token {
    /// As CloudWatch Logs writes its tokens: a direction and 56 digits.
    pub fn text(&self) -> String {
        match self {
            Token::Forward(i) => format!("f/{i:056}"),
            Token::Backward(i) => format!("b/{i:056}"),
        }
    }

    pub fn parse(text: &str) -> Option<Token> {
        let (dir, digits) = text.split_once('/')?;
        if digits.len() != 56 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let i = digits.parse().ok()?;
        match dir {
            "f" => Some(Token::Forward(i)),
            "b" => Some(Token::Backward(i)),
            _ => None,
        }
    }
}

/// A stream's chunks, and the index of each one's first event.
struct Indexed {
    chunks: Vec<Listed>,
    starts: Vec<u64>,
    total: u64,
}

impl Indexed {
    fn of(chunks: Vec<Listed>) -> Indexed {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut total = 0;
        for c in &chunks {
            starts.push(total);
            total += u64::from(c.chunk.lines);
        }
        Indexed { chunks, starts, total }
    }
}

/// Whether a chunk can hold events in `[start, end)` (milliseconds).
fn in_range(c: &Listed, start: Option<i64>, end: Option<i64>) -> bool {
    c.chunk.lines > 0
        && start.is_none_or(|s| c.chunk.last_ms >= s)
        && end.is_none_or(|e| c.chunk.first_ms < e)
}

async fn get_log_events(bucket: &Bucket, ns: &str, i: GetLogEventsInput) -> ApiResult<GetLogEventsOutput> {
    let group = group_name(i.log_group_name, i.log_group_identifier)?;
    check_name("logStreamName", &i.log_stream_name, 512)?;
    let limit = check_limit(i.limit, MAX_EVENTS)?;
    let token = match i.next_token.as_deref() {
        Some(t) => Some(Token::parse(t).ok_or_else(|| invalid("The specified nextToken is invalid."))?),
        None => None,
    };
    let stream =
        StreamId { namespace: ns.to_string(), group: group.clone(), name: i.log_stream_name.clone() };
    let chunks = bucket.chunks(&stream).await.map_err(|e| ApiError::server(e.to_string()))?;
    if chunks.is_empty() {
        return Err(not_found("The specified log stream does not exist."));
    }
    let stream = Indexed::of(chunks);
    let (start, end) = (i.start_time, i.end_time);
    let token =
        token.unwrap_or(if i.start_from_head { Token::Forward(0) } else { Token::Backward(stream.total) });
    let mut out: Vec<(u64, OutputEvent)> = Vec::new();
    let mut bytes = 0;
    match token {
        Token::Forward(from) => {
            'chunks: for (c, &first) in stream.chunks.iter().zip(&stream.starts) {
                if first + u64::from(c.chunk.lines) <= from || !in_range(c, start, end) {
                    continue;
                }
                let body = bucket.read(&c.key).await.map_err(|e| ApiError::server(e.to_string()))?;
                for (k, (ns_time, message)) in events(&body).enumerate() {
                    let index = first + k as u64;
                    let ms = ns_time.div_euclid(1_000_000);
                    if index < from || start.is_some_and(|s| ms < s) || end.is_some_and(|e| ms >= e) {
                        continue;
                    }
                    if out.len() == limit || bytes + message.len() > MAX_BYTES {
                        break 'chunks;
                    }
                    bytes += message.len() + 26;
                    out.push((index, event(ms, message, c)));
                }
            }
        }
        Token::Backward(before) => {
            'back: for (c, &first) in stream.chunks.iter().zip(&stream.starts).rev() {
                if first >= before || !in_range(c, start, end) {
                    continue;
                }
                let body = bucket.read(&c.key).await.map_err(|e| ApiError::server(e.to_string()))?;
                let all: Vec<(i64, &str)> = events(&body).collect();
                for (k, (ns_time, message)) in all.into_iter().enumerate().rev() {
                    let index = first + k as u64;
                    let ms = ns_time.div_euclid(1_000_000);
                    if index >= before || start.is_some_and(|s| ms < s) || end.is_some_and(|e| ms >= e) {
                        continue;
                    }
                    if out.len() == limit || bytes + message.len() > MAX_BYTES {
                        break 'back;
                    }
                    bytes += message.len() + 26;
                    out.push((index, event(ms, message, c)));
                }
            }
            out.reverse();
        }
    }
    // At either end of the stream, the token given comes back.
    let (forward, backward) = match (out.first(), out.last(), token) {
        (Some((first, _)), Some((last, _)), _) => (Token::Forward(last + 1), Token::Backward(*first)),
        (_, _, Token::Forward(from)) => (Token::Forward(from), Token::Backward(from)),
        (_, _, Token::Backward(before)) => (Token::Forward(before), Token::Backward(before)),
    };
    Ok(GetLogEventsOutput {
        events: out.into_iter().map(|(_, e)| e).collect(),
        next_forward_token: forward.text(),
        next_backward_token: backward.text(),
    })
}

fn event(ms: i64, message: &str, c: &Listed) -> OutputEvent {
    OutputEvent {
        timestamp: ms,
        message: message.to_string(),
        ingestion_time: c.written.timestamp_millis().max(ms),
    }
}

/// A FilterLogEvents pattern of plain terms: every bare term must appear, at least one `?`
/// term if there are any, and no `-` term; `"quoted phrases"` are one term. Matching is
/// case-sensitive, as CloudWatch Logs' is.
#[derive(Debug, Default, PartialEq)]
pub struct Pattern {
    all: Vec<String>,
    any: Vec<String>,
    none: Vec<String>,
}

impl Pattern {
    pub fn parse(text: &str) -> ApiResult<Pattern> {
        if text.len() > MAX_PATTERN {
            return Err(invalid(format!("filterPattern is longer than {MAX_PATTERN} characters")));
        }
        let t = text.trim();
        if t.starts_with('{') || t.starts_with('[') || t.starts_with('%') {
            return Err(invalid(
                "filterPattern: JSON, space-delimited and regular-expression patterns are not served; use plain terms",
            ));
        }
        let mut p = Pattern::default();
        let mut rest = t;
        while !rest.is_empty() {
            let (kind, after) = match rest.as_bytes()[0] {
                b'?' => (1, &rest[1..]),
                b'-' => (2, &rest[1..]),
                _ => (0, rest),
            };
            let (term, next) = match after.strip_prefix('"') {
                Some(q) => {
                    let end = q.find('"').ok_or_else(|| invalid("filterPattern: a quote is not closed"))?;
                    (&q[..end], &q[end + 1..])
                }
                None => after.split_at(after.find(char::is_whitespace).unwrap_or(after.len())),
            };
            if !term.is_empty() {
                [&mut p.all, &mut p.any, &mut p.none][kind].push(term.to_string());
            }
            rest = next.trim_start();
        }
        Ok(p)
    }

    pub fn matches(&self, message: &str) -> bool {
        self.all.iter().all(|t| message.contains(t.as_str()))
            && (self.any.is_empty() || self.any.iter().any(|t| message.contains(t.as_str())))
            && !self.none.iter().any(|t| message.contains(t.as_str()))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterLogEventsInput {
    log_group_name: Option<String>,
    log_group_identifier: Option<String>,
    #[serde(default)]
    log_stream_names: Vec<String>,
    log_stream_name_prefix: Option<String>,
    start_time: Option<i64>,
    end_time: Option<i64>,
    filter_pattern: Option<String>,
    next_token: Option<String>,
    limit: Option<i32>,
    #[allow(dead_code)]
    interleaved: Option<bool>,
    #[allow(dead_code)]
    unmask: Option<bool>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct FilteredEvent {
    log_stream_name: String,
    timestamp: i64,
    message: String,
    ingestion_time: i64,
    event_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchedStream {
    log_stream_name: String,
    searched_completely: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterLogEventsOutput {
    events: Vec<FilteredEvent>,
    searched_log_streams: Vec<SearchedStream>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

/// The last event a FilterLogEvents page returned (or looked at): the next page starts
/// after it, in the order of (time, stream, index).
type After = (i64, String, u64);

fn after_text(a: &After) -> String {
    let json = serde_json::to_vec(a).expect("plain data");
    json.iter().map(|b| format!("{b:02x}")).collect()
}

fn after_parse(text: &str) -> Option<After> {
    if !text.len().is_multiple_of(2) || text.len() > 4096 {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect();
    serde_json::from_slice(&bytes?).ok()
}

/// An event's id: unique in its group (the stream's digest, then its index), 56 digits as
/// CloudWatch Logs' are.
fn event_id(stream: &str, index: u64) -> String {
    let d = sha2::Sha256::digest(stream.as_bytes());
    let h = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
    format!("{h:020}{index:036}")
}

/// One stream being read in time order: its chunks, the next one to load, and the events of
/// the loaded one still to look at.
struct Head {
    name: String,
    chunks: Vec<Listed>,
    starts: Vec<u64>,
    next_chunk: usize,
    loaded: std::collections::VecDeque<(i64, u64, String)>,
    written_ms: i64,
}

async fn filter_log_events(
    bucket: &Bucket,
    ns: &str,
    i: FilterLogEventsInput,
) -> ApiResult<FilterLogEventsOutput> {
    let group = group_name(i.log_group_name, i.log_group_identifier)?;
    let limit = check_limit(i.limit, MAX_EVENTS)?;
    if !i.log_stream_names.is_empty() && i.log_stream_name_prefix.is_some() {
        return Err(invalid("give logStreamNames or logStreamNamePrefix, not both"));
    }
    if i.log_stream_names.len() > 100 {
        return Err(invalid("logStreamNames holds at most 100 names"));
    }
    for n in &i.log_stream_names {
        check_name("logStreamNames", n, 512)?;
    }
    if let Some(p) = &i.log_stream_name_prefix {
        check_name("logStreamNamePrefix", p, 512)?;
    }
    let pattern = Pattern::parse(i.filter_pattern.as_deref().unwrap_or(""))?;
    let after = match i.next_token.as_deref() {
        Some(t) => Some(after_parse(t).ok_or_else(|| invalid("The specified nextToken is invalid."))?),
        None => None,
    };
    let prefix = i.log_stream_name_prefix.clone().unwrap_or_default();
    let (streams, _) = bucket
        .streams(ns, &group, &prefix, None, usize::MAX)
        .await
        .map_err(|e| ApiError::server(e.to_string()))?;
    if streams.is_empty()
        && bucket.groups(ns).await.map_err(|e| ApiError::server(e.to_string()))?.iter().all(|g| *g != group)
    {
        return Err(not_found("The specified log group does not exist."));
    }
    let streams: Vec<StreamListing> = streams
        .into_iter()
        .filter(|s| i.log_stream_names.is_empty() || i.log_stream_names.contains(&s.name))
        .collect();
    let (start, end) = (i.start_time, i.end_time);
    let after_ms = after.as_ref().map(|a| a.0.div_euclid(1_000_000));
    let mut heads: Vec<Head> = streams
        .iter()
        .map(|s| {
            let x = Indexed::of(s.chunks.clone());
            Head {
                name: s.name.clone(),
                chunks: x.chunks,
                starts: x.starts,
                next_chunk: 0,
                loaded: Default::default(),
                written_ms: 0,
            }
        })
        .collect();
    // The heap holds each stream's next event: (time, stream, index).
    let mut heap: BinaryHeap<Reverse<(i64, usize, u64)>> = BinaryHeap::new();
    let mut scanned = 0;
    for (k, h) in heads.iter_mut().enumerate() {
        scanned += load(bucket, h, start.max(after_ms), end).await?;
        if let Some((t, idx, _)) = h.loaded.front() {
            heap.push(Reverse((*t, k, *idx)));
        }
    }
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut last: Option<After> = None;
    let mut more = false;
    while let Some(Reverse((t, k, idx))) = heap.pop() {
        if out.len() == limit || bytes >= MAX_BYTES || scanned >= FILTER_SCAN_BYTES {
            more = true;
            break;
        }
        let h = &mut heads[k];
        let (_, _, message) = h.loaded.pop_front().expect("the heap names a loaded event");
        let key: After = (t, h.name.clone(), idx);
        let ms = t.div_euclid(1_000_000);
        let fresh = after.as_ref().is_none_or(|a| (a.0, &a.1, a.2) < (key.0, &key.1, key.2));
        if fresh && start.is_none_or(|s| ms >= s) && end.is_none_or(|e| ms < e) && pattern.matches(&message) {
            bytes += message.len() + 26;
            out.push(FilteredEvent {
                log_stream_name: h.name.clone(),
                timestamp: ms,
                ingestion_time: h.written_ms.max(ms),
                event_id: event_id(&h.name, idx),
                message,
            });
        }
        last = Some(key);
        if h.loaded.is_empty() {
            scanned += load(bucket, h, start.max(after_ms), end).await?;
        }
        if let Some((t, idx, _)) = h.loaded.front() {
            heap.push(Reverse((*t, k, *idx)));
        }
    }
    Ok(FilterLogEventsOutput {
        searched_log_streams: heads
            .iter()
            .map(|h| SearchedStream { log_stream_name: h.name.clone(), searched_completely: !more })
            .collect(),
        events: out,
        next_token: if more { last.as_ref().map(after_text) } else { None },
    })
}

/// Loads a stream's next chunk that can hold events in the range; the bytes read.
async fn load(bucket: &Bucket, h: &mut Head, start: Option<i64>, end: Option<i64>) -> ApiResult<usize> {
    while h.next_chunk < h.chunks.len() {
        let (c, first) = (&h.chunks[h.next_chunk], h.starts[h.next_chunk]);
        h.next_chunk += 1;
        if !in_range(c, start, end) {
            continue;
        }
        let body = bucket.read(&c.key).await.map_err(|e| ApiError::server(e.to_string()))?;
        h.written_ms = c.written.timestamp_millis();
        h.loaded =
            events(&body).enumerate().map(|(k, (t, m))| (t, first + k as u64, m.to_string())).collect();
        return Ok(body.len());
    }
    Ok(0)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeLogStreamsInput {
    log_group_name: Option<String>,
    log_group_identifier: Option<String>,
    log_stream_name_prefix: Option<String>,
    order_by: Option<String>,
    #[serde(default)]
    descending: bool,
    next_token: Option<String>,
    limit: Option<i32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogStream {
    log_stream_name: String,
    creation_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_event_timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_event_timestamp: Option<i64>,
    last_ingestion_time: i64,
    arn: String,
    stored_bytes: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeLogStreamsOutput {
    log_streams: Vec<LogStream>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

fn logs_arn(ctx: &Context, group: &str) -> String {
    format!("arn:aws:logs:{}:{}:log-group:{group}", ctx.arns.region, ctx.arns.account_id)
}

async fn describe_log_streams(
    ctx: &Context,
    bucket: &Bucket,
    ns: &str,
    i: DescribeLogStreamsInput,
) -> ApiResult<DescribeLogStreamsOutput> {
    let group = group_name(i.log_group_name, i.log_group_identifier)?;
    let limit = check_limit(i.limit, MAX_DESCRIBED)?;
    let by_time = match i.order_by.as_deref() {
        None | Some("LogStreamName") => false,
        Some("LastEventTime") => true,
        Some(o) => return Err(invalid(format!("orderBy {o:?} is LogStreamName or LastEventTime"))),
    };
    let prefix = i.log_stream_name_prefix.unwrap_or_default();
    if !prefix.is_empty() {
        check_name("logStreamNamePrefix", &prefix, 512)?;
        if by_time {
            return Err(invalid("Cannot order by LastEventTime with a logStreamNamePrefix."));
        }
    }
    let server = |e: crate::archive::s3::Error| ApiError::server(e.to_string());
    let (page, next) = if !by_time && !i.descending {
        // In name order: one listing from where the last page ended.
        if let Some(t) = &i.next_token {
            check_name("nextToken", t, 1024).map_err(|_| invalid("The specified nextToken is invalid."))?;
        }
        let (streams, more) =
            bucket.streams(ns, &group, &prefix, i.next_token.as_deref(), limit).await.map_err(server)?;
        let next = more.then(|| streams.last().map(|s| s.name.clone())).flatten();
        (streams, next)
    } else {
        let offset: usize = match &i.next_token {
            Some(t) => t
                .strip_prefix("o/")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| invalid("The specified nextToken is invalid."))?,
            None => 0,
        };
        let (mut all, _) = bucket.streams(ns, &group, &prefix, None, usize::MAX).await.map_err(server)?;
        if by_time {
            all.sort_by_key(|s| (s.last_ms().unwrap_or(0), s.name.clone()));
        }
        if i.descending {
            all.reverse();
        }
        let more = all.len() > offset + limit;
        let page: Vec<StreamListing> = all.into_iter().skip(offset).take(limit).collect();
        (page, more.then(|| format!("o/{}", offset + limit)))
    };
    if page.is_empty() && i.next_token.is_none() {
        let groups = bucket.groups(ns).await.map_err(server)?;
        if !groups.contains(&group) {
            return Err(not_found("The specified log group does not exist."));
        }
    }
    let arn = logs_arn(ctx, &group);
    Ok(DescribeLogStreamsOutput {
        log_streams: page
            .iter()
            .map(|s| LogStream {
                log_stream_name: s.name.clone(),
                creation_time: s.created().map_or(0, |t| t.timestamp_millis()),
                first_event_timestamp: s.first_ms(),
                last_event_timestamp: s.last_ms(),
                last_ingestion_time: s.last_written().map_or(0, |t| t.timestamp_millis()),
                arn: format!("{arn}:log-stream:{}", s.name),
                stored_bytes: s.bytes(),
            })
            .collect(),
        next_token: next,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeLogGroupsInput {
    log_group_name_prefix: Option<String>,
    log_group_name_pattern: Option<String>,
    next_token: Option<String>,
    limit: Option<i32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogGroup {
    log_group_name: String,
    creation_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_in_days: Option<u32>,
    metric_filter_count: u32,
    arn: String,
    log_group_arn: String,
    stored_bytes: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeLogGroupsOutput {
    log_groups: Vec<LogGroup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

async fn describe_log_groups(
    ctx: &Context,
    bucket: &Bucket,
    ns: &str,
    i: DescribeLogGroupsInput,
) -> ApiResult<DescribeLogGroupsOutput> {
    let limit = check_limit(i.limit, MAX_DESCRIBED)?;
    if i.log_group_name_prefix.is_some() && i.log_group_name_pattern.is_some() {
        return Err(invalid("give logGroupNamePrefix or logGroupNamePattern, not both"));
    }
    let mut groups = bucket.groups(ns).await.map_err(|e| ApiError::server(e.to_string()))?;
    groups.sort();
    let prefix = i.log_group_name_prefix.unwrap_or_default();
    let pattern = i.log_group_name_pattern.unwrap_or_default();
    let start = match &i.next_token {
        Some(t) => Some(t.strip_prefix("g/").ok_or_else(|| invalid("The specified nextToken is invalid."))?),
        None => None,
    };
    let mut page: Vec<String> = groups
        .into_iter()
        .filter(|g| g.starts_with(&prefix) && g.contains(&pattern))
        .filter(|g| start.is_none_or(|s| g.as_str() > s))
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let retention = (ctx.retention_days > 0).then_some(ctx.retention_days);
    Ok(DescribeLogGroupsOutput {
        next_token: more.then(|| page.last().map(|g| format!("g/{g}"))).flatten(),
        log_groups: page
            .into_iter()
            .map(|g| {
                let arn = logs_arn(ctx, &g);
                LogGroup {
                    creation_time: 0,
                    retention_in_days: retention,
                    metric_filter_count: 0,
                    arn: format!("{arn}:*"),
                    log_group_arn: arn,
                    stored_bytes: 0,
                    log_group_name: g,
                }
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_read_back_and_look_like_cloudwatch_logs_ones() {
        for t in [Token::Forward(0), Token::Backward(50_000)] {
            assert_eq!(Token::parse(&t.text()), Some(t));
            assert_eq!(t.text().len(), 58);
        }
        for bad in ["", "f/12", "x/00000000000000000000000000000000000000000000000000000000", "f/..", "f/-1"]
        {
            assert_eq!(Token::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn plain_terms_all_match_question_terms_any_and_minus_terms_none() {
        let p = Pattern::parse(r#"ERROR "disk full" ?node-1 ?node-2 -retrying"#).unwrap();
        assert!(p.matches("ERROR on node-2: disk full"));
        assert!(!p.matches("ERROR on node-3: disk full"), "no ? term");
        assert!(!p.matches("ERROR on node-1: disk full, retrying"), "a - term");
        assert!(!p.matches("error on node-1: disk full"), "case matters");
        assert!(Pattern::parse("").unwrap().matches("anything"));
        assert_eq!(Pattern::parse("{ $.level = \"x\" }").unwrap_err().code, "InvalidParameterException");
        assert_eq!(
            Pattern::parse(&"x".repeat(MAX_PATTERN + 1)).unwrap_err().code,
            "InvalidParameterException"
        );
        assert_eq!(Pattern::parse("\"open").unwrap_err().code, "InvalidParameterException");
    }

    #[test]
    fn names_with_colons_stars_or_dot_dot_are_refused() {
        for bad in ["a:b", "a*", "../other/default/x", ""] {
            assert_eq!(check_name("logStreamName", bad, 512).unwrap_err().code, "InvalidParameterException");
        }
        check_name("logStreamName", "render/default/render-1a2b3c4d-1", 512).unwrap();
        assert_eq!(check_limit(Some(-1), MAX_EVENTS).unwrap_err().code, "InvalidParameterException");
        assert_eq!(check_limit(None, MAX_EVENTS).unwrap(), MAX_EVENTS);
    }

    #[test]
    fn a_filter_token_reads_back_and_garbage_does_not() {
        let a: After = (1_765_000_000_000_000_123, "etl/default/p-1".into(), 42);
        assert_eq!(after_parse(&after_text(&a)), Some(a));
        assert_eq!(after_parse("zz"), None);
        assert_eq!(after_parse("abc"), None);
    }

    #[test]
    fn event_ids_are_56_digits_and_differ_by_stream_and_index() {
        let a = event_id("s/default/1", 0);
        assert_eq!(a.len(), 56);
        assert!(a.bytes().all(|b| b.is_ascii_digit()));
        assert_ne!(a, event_id("s/default/2", 0));
        assert_ne!(a, event_id("s/default/1", 1));
    }
}
