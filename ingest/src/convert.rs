//! OTLP spans to Arrow rows: a pure function from a decoded export request to a `RecordBatch` in the
//! stored schema, with invalid spans rejected one by one.
//!
//! Validation happens before anything is appended, so a rejected span leaves no trace in the batch.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, FixedSizeBinaryBuilder, Float64Builder, Int8Builder, Int64Builder,
    ListArray, MapArray, RecordBatch, StringBuilder, StringDictionaryBuilder, StructArray, TimestampNanosecondBuilder,
    UInt32Builder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{Int32Type, SchemaRef};
use hopscope_schemas::attr::{array_to_json_text, kvlist_to_json_text};
use hopscope_schemas::columns::{self as c, SEMCONV, SemconvType};
use hopscope_schemas::spans::{self, event_fields, link_fields, span_schema};
use hopscope_schemas::{AttrValue, SpanId, TraceId};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::IngestError;

/// How many rejection reasons are spelled out in the partial-success message.
const MAX_REASONS: usize = 5;

/// Size caps applied while converting, so that one span cannot store megabytes: oversized values
/// are truncated and oversized spans trimmed, and the export's `partial_success.error_message`
/// says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanLimits {
    /// Longest value kept, in bytes. A longer string is cut at a character boundary, a byte string
    /// at this length, and an array or key-value list keeps the leading elements that fit. Applies
    /// to attribute values (of spans, events, links, resources and scopes), span names, status
    /// messages and event names.
    pub max_value_bytes: usize,
    /// Most bytes one span's attributes, events and links may hold (keys, names and values, after
    /// the value cap). Past it the span keeps its semantic-convention attributes first, then the
    /// other attributes, events and links in order while they fit; the rest are dropped and
    /// counted in the span's dropped counts, as an SDK's span limits would.
    pub max_span_bytes: usize,
}

impl Default for SpanLimits {
    fn default() -> Self {
        Self { max_value_bytes: 32 * 1024, max_span_bytes: 1024 * 1024 }
    }
}

/// The outcome of converting one export request.
#[derive(Debug)]
pub struct Converted {
    /// The accepted spans, in the stored schema; `None` when no span was accepted.
    pub batch: Option<RecordBatch>,
    pub accepted: u64,
    pub rejected: u64,
    /// Values cut to [`SpanLimits::max_value_bytes`].
    pub truncated_values: u64,
    /// Spans that lost attributes, events or links to [`SpanLimits::max_span_bytes`].
    pub trimmed_spans: u64,
    /// Why spans were rejected (the first few reasons) and what was truncated, for
    /// `partial_success.error_message`.
    pub error_message: Option<String>,
}

/// Converts an export request into the stored schema, applying `limits`.
pub fn convert_request(request: &ExportTraceServiceRequest, limits: &SpanLimits) -> Result<Converted, IngestError> {
    let mut cols = SpanColumns::with_capacity(&Sizes::of(request));
    let mut rejected = 0u64;
    let mut reasons = Vec::new();
    let mut caps = Caps::new(limits);
    for (ri, rs) in request.resource_spans.iter().enumerate() {
        let resource = rs.resource.as_ref();
        let resource_attrs = caps.attributes(resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]), || {
            format!("resourceSpans[{ri}].resource")
        });
        let resource_attrs: &[KeyValue] = &resource_attrs;
        let service_name = resource_attrs
            .iter()
            .find(|kv| kv.key == c::SERVICE_NAME_KEY)
            .and_then(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
                _ => None,
            })
            .unwrap_or(c::UNKNOWN_SERVICE);
        for (si, ss) in rs.scope_spans.iter().enumerate() {
            let scope = ss.scope.as_ref();
            let scope_attrs = caps.attributes(scope.map_or(&[][..], |s| s.attributes.as_slice()), || {
                format!("resourceSpans[{ri}].scopeSpans[{si}].scope")
            });
            for (pi, span) in ss.spans.iter().enumerate() {
                if let Err(reason) = validate(span) {
                    rejected += 1;
                    if reasons.len() < MAX_REASONS {
                        reasons.push(format!("resourceSpans[{ri}].scopeSpans[{si}].spans[{pi}]: {reason}"));
                    }
                    continue;
                }
                let span = caps.span(span, || format!("resourceSpans[{ri}].scopeSpans[{si}].spans[{pi}]"));
                cols.append_span(&span, service_name);
                cols.resource_attributes.append(resource_attrs);
                cols.resource_dropped.append_value(resource.map_or(0, |r| r.dropped_attributes_count));
                cols.resource_schema_url.append_value(&rs.schema_url);
                cols.scope_name.append_value(scope.map_or("", |s| s.name.as_str()));
                cols.scope_version.append_value(scope.map_or("", |s| s.version.as_str()));
                cols.scope_attributes.append(scope_attrs.iter());
                cols.scope_dropped.append_value(scope.map_or(0, |s| s.dropped_attributes_count));
                cols.scope_schema_url.append_value(&ss.schema_url);
            }
        }
    }
    let accepted = cols.rows as u64;
    let rejection = (rejected > 0).then(|| {
        let more = rejected as usize - reasons.len();
        let tail = if more > 0 { format!("; and {more} more") } else { String::new() };
        format!("rejected {rejected} span(s): {}{tail}", reasons.join("; "))
    });
    let notes: Vec<String> = rejection.into_iter().chain(caps.report()).collect();
    let error_message = (!notes.is_empty()).then(|| notes.join("; "));
    let batch = if accepted > 0 { Some(cols.finish()?) } else { None };
    Ok(Converted {
        batch,
        accepted,
        rejected,
        truncated_values: caps.truncated_values,
        trimmed_spans: caps.trimmed_spans,
        error_message,
    })
}

/// Applies [`SpanLimits`] and remembers what it cut, for the partial-success message. Values and
/// spans within the limits are borrowed as they are: the caps cost a size check on the hot path.
struct Caps<'l> {
    limits: &'l SpanLimits,
    truncated_values: u64,
    trimmed_spans: u64,
    /// Where the first truncated value was, and its size.
    first_truncated: Option<String>,
    first_trimmed: Option<String>,
}

impl<'l> Caps<'l> {
    fn new(limits: &'l SpanLimits) -> Self {
        Self { limits, truncated_values: 0, trimmed_spans: 0, first_truncated: None, first_trimmed: None }
    }

    /// What was cut, for `partial_success.error_message`.
    fn report(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.truncated_values > 0 {
            notes.push(format!(
                "truncated {} value(s) longer than {} bytes (first: {})",
                self.truncated_values,
                self.limits.max_value_bytes,
                self.first_truncated.as_deref().unwrap_or("?")
            ));
        }
        if self.trimmed_spans > 0 {
            notes.push(format!(
                "{} span(s) held more than {} bytes of attributes, events and links; what did not fit was \
                 dropped and counted in their dropped counts (first: {})",
                self.trimmed_spans,
                self.limits.max_span_bytes,
                self.first_trimmed.as_deref().unwrap_or("?")
            ));
        }
        notes
    }

    fn note_truncated(&mut self, what: impl FnOnce() -> String) {
        self.truncated_values += 1;
        if self.first_truncated.is_none() {
            self.first_truncated = Some(what());
        }
    }

    /// `attrs` with every value within the value cap.
    fn attributes<'a>(&mut self, attrs: &'a [KeyValue], at: impl Fn() -> String) -> Cow<'a, [KeyValue]> {
        let cap = self.limits.max_value_bytes;
        if attrs.iter().all(|kv| kv_value_bytes(kv) <= cap) {
            return Cow::Borrowed(attrs);
        }
        let mut owned = attrs.to_vec();
        for kv in &mut owned {
            let size = kv_value_bytes(kv);
            if size > cap
                && let Some(value) = kv.value.as_mut().and_then(|v| v.value.as_mut())
            {
                cap_value(value, cap);
                self.note_truncated(|| format!("{} attribute {:?} of {size} bytes", at(), kv.key));
            }
        }
        Cow::Owned(owned)
    }

    /// `span` within the value cap and the span cap.
    fn span<'a>(&mut self, span: &'a Span, at: impl Fn() -> String) -> Cow<'a, Span> {
        let cap = self.limits.max_value_bytes;
        let long = |s: &str| s.len() > cap;
        let oversized_value = long(&span.name)
            || span.status.as_ref().is_some_and(|s| long(&s.message))
            || span.attributes.iter().any(|kv| kv_value_bytes(kv) > cap)
            || span.events.iter().any(|e| long(&e.name) || e.attributes.iter().any(|kv| kv_value_bytes(kv) > cap))
            || span.links.iter().any(|l| l.attributes.iter().any(|kv| kv_value_bytes(kv) > cap));
        if !oversized_value && span_bytes(span) <= self.limits.max_span_bytes {
            return Cow::Borrowed(span);
        }
        let mut span = span.clone();
        if long(&span.name) {
            self.note_truncated(|| format!("{} name of {} bytes", at(), span.name.len()));
            truncate_str(&mut span.name, cap);
        }
        if let Some(status) = span.status.as_mut().filter(|s| long(&s.message)) {
            self.note_truncated(|| format!("{} status message of {} bytes", at(), status.message.len()));
            truncate_str(&mut status.message, cap);
        }
        span.attributes = self.attributes(&span.attributes, || format!("{} attributes", at())).into_owned();
        for (i, event) in span.events.iter_mut().enumerate() {
            if long(&event.name) {
                self.note_truncated(|| format!("{} events[{i}] name of {} bytes", at(), event.name.len()));
                truncate_str(&mut event.name, cap);
            }
            event.attributes = self.attributes(&event.attributes, || format!("{} events[{i}]", at())).into_owned();
        }
        for (i, link) in span.links.iter_mut().enumerate() {
            link.attributes = self.attributes(&link.attributes, || format!("{} links[{i}]", at())).into_owned();
        }
        if span_bytes(&span) > self.limits.max_span_bytes {
            let size = span_bytes(&span);
            trim_span(&mut span, self.limits.max_span_bytes);
            self.trimmed_spans += 1;
            if self.first_trimmed.is_none() {
                self.first_trimmed = Some(format!("{} with {size} bytes", at()));
            }
        }
        Cow::Owned(span)
    }
}

/// Bytes a value holds: the length of strings and byte strings, 8 for numbers and booleans, the
/// sum of the elements (and keys) for arrays and key-value lists.
fn value_bytes(value: &any_value::Value) -> usize {
    use any_value::Value as V;
    match value {
        V::StringValue(s) => s.len(),
        V::BytesValue(b) => b.len(),
        V::BoolValue(_) | V::IntValue(_) | V::DoubleValue(_) | V::StringValueStrindex(_) => 8,
        V::ArrayValue(a) => a.values.iter().map(any_value_bytes).sum(),
        V::KvlistValue(kv) => kv.values.iter().map(|kv| kv.key.len() + kv_value_bytes(kv)).sum(),
    }
}

fn any_value_bytes(value: &AnyValue) -> usize {
    value.value.as_ref().map_or(0, value_bytes)
}

fn kv_value_bytes(kv: &KeyValue) -> usize {
    kv.value.as_ref().map_or(0, any_value_bytes)
}

fn kv_bytes(kv: &KeyValue) -> usize {
    kv.key.len() + kv_value_bytes(kv)
}

fn event_bytes(event: &opentelemetry_proto::tonic::trace::v1::span::Event) -> usize {
    event.name.len() + event.attributes.iter().map(kv_bytes).sum::<usize>()
}

fn link_bytes(link: &opentelemetry_proto::tonic::trace::v1::span::Link) -> usize {
    link.trace_id.len() + link.span_id.len() + link.attributes.iter().map(kv_bytes).sum::<usize>()
}

/// What [`SpanLimits::max_span_bytes`] counts of a span.
fn span_bytes(span: &Span) -> usize {
    span.attributes.iter().map(kv_bytes).sum::<usize>()
        + span.events.iter().map(event_bytes).sum::<usize>()
        + span.links.iter().map(link_bytes).sum::<usize>()
}

/// Cuts `s` to at most `max` bytes, at a character boundary.
fn truncate_str(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

/// Cuts a value to at most `max` bytes (as [`value_bytes`] counts them); numbers and booleans are
/// kept whole.
fn cap_value(value: &mut any_value::Value, max: usize) {
    use any_value::Value as V;
    match value {
        V::StringValue(s) => truncate_str(s, max),
        V::BytesValue(b) => b.truncate(max),
        V::BoolValue(_) | V::IntValue(_) | V::DoubleValue(_) | V::StringValueStrindex(_) => {}
        V::ArrayValue(a) => {
            let mut budget = max;
            let mut keep = a.values.len();
            for (i, element) in a.values.iter_mut().enumerate() {
                let size = any_value_bytes(element);
                if size <= budget {
                    budget -= size;
                    continue;
                }
                if let Some(inner) = element.value.as_mut().filter(|_| budget > 0) {
                    cap_value(inner, budget);
                    keep = i + 1;
                } else {
                    keep = i;
                }
                break;
            }
            a.values.truncate(keep);
        }
        V::KvlistValue(kvs) => {
            let mut budget = max;
            let mut keep = kvs.values.len();
            for (i, kv) in kvs.values.iter_mut().enumerate() {
                let size = kv_bytes(kv);
                if size <= budget {
                    budget -= size;
                    continue;
                }
                keep = i;
                if kv.key.len() < budget
                    && let Some(inner) = kv.value.as_mut().and_then(|v| v.value.as_mut())
                {
                    cap_value(inner, budget - kv.key.len());
                    keep = i + 1;
                }
                break;
            }
            kvs.values.truncate(keep);
        }
    }
}

/// Drops what does not fit in `max` bytes: semantic-convention attributes are kept first (the
/// analyses read them), then other attributes, events and links in order.
fn trim_span(span: &mut Span, max: usize) {
    let mut budget = max;
    let mut take = |size: usize| {
        let fits = size <= budget;
        if fits {
            budget -= size;
        }
        fits
    };
    let index = semconv_index();
    let dedicated: Vec<bool> = span.attributes.iter().map(|kv| index.contains_key(kv.key.as_str())).collect();
    let mut keep = vec![false; span.attributes.len()];
    for pass_dedicated in [true, false] {
        for (i, kv) in span.attributes.iter().enumerate() {
            if dedicated[i] == pass_dedicated {
                keep[i] = take(kv_bytes(kv));
            }
        }
    }
    let before = span.attributes.len();
    let mut flags = keep.into_iter();
    span.attributes.retain(|_| flags.next().unwrap_or(false));
    span.dropped_attributes_count += (before - span.attributes.len()) as u32;
    let events = span.events.iter().map(event_bytes).take_while(|&size| take(size)).count();
    span.dropped_events_count += (span.events.len() - events) as u32;
    span.events.truncate(events);
    let links = span.links.iter().map(link_bytes).take_while(|&size| take(size)).count();
    span.dropped_links_count += (span.links.len() - links) as u32;
    span.links.truncate(links);
}

/// How many rows and entries each column of a request's batch will hold, so that every builder is
/// allocated once at its size: a batch waits in the trace buffer with whatever capacity its
/// builders had, and builders left at their default size (1024 entries each, over a hundred of
/// them) would make a one-span export hold a megabyte.
#[derive(Debug, Default)]
struct Sizes {
    spans: usize,
    attributes: AttrSizes,
    events: usize,
    event_attributes: AttrSizes,
    links: usize,
    link_attributes: AttrSizes,
    resource_attributes: AttrSizes,
    scope_attributes: AttrSizes,
    /// Bytes of the string values of each dedicated column, in [`SEMCONV`]'s order.
    semconv_bytes: Vec<usize>,
    /// Bytes of the scope names, the scope versions and the status messages of every row.
    scope_name_bytes: usize,
    scope_version_bytes: usize,
    status_message_bytes: usize,
}

/// The entries of one attribute map column, and the bytes of their keys and string values.
#[derive(Debug, Default, Clone, Copy)]
struct AttrSizes {
    entries: usize,
    key_bytes: usize,
    str_bytes: usize,
}

impl AttrSizes {
    /// The sizes of `attrs`, repeated `times` times.
    fn of<'a>(attrs: impl IntoIterator<Item = &'a KeyValue>, times: usize) -> Self {
        let mut sizes = AttrSizes::default();
        for kv in attrs {
            sizes.add(kv);
        }
        AttrSizes {
            entries: sizes.entries * times,
            key_bytes: sizes.key_bytes * times,
            str_bytes: sizes.str_bytes * times,
        }
    }

    fn add(&mut self, kv: &KeyValue) {
        self.entries += 1;
        self.key_bytes += kv.key.len();
        if let Some(any_value::Value::StringValue(v)) = kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            self.str_bytes += v.len();
        }
    }

    fn extend(&mut self, other: AttrSizes) {
        self.entries += other.entries;
        self.key_bytes += other.key_bytes;
        self.str_bytes += other.str_bytes;
    }
}

impl Sizes {
    /// The sizes of `request`'s columns: rejected spans are counted too, and values before
    /// truncation. An attribute with a dedicated column's key is counted for that column; one that
    /// goes to the map instead (of another type, or repeated) makes the map's builders grow.
    fn of(request: &ExportTraceServiceRequest) -> Self {
        let index = semconv_index();
        let mut sizes = Sizes { semconv_bytes: vec![0; SEMCONV.len()], ..Sizes::default() };
        for rs in &request.resource_spans {
            let resource = rs.resource.as_ref().map_or(&[][..], |r| r.attributes.as_slice());
            for ss in &rs.scope_spans {
                let scope = ss.scope.as_ref().map_or(&[][..], |s| s.attributes.as_slice());
                sizes.spans += ss.spans.len();
                sizes.resource_attributes.extend(AttrSizes::of(resource, ss.spans.len()));
                sizes.scope_attributes.extend(AttrSizes::of(scope, ss.spans.len()));
                sizes.scope_name_bytes += ss.scope.as_ref().map_or(0, |s| s.name.len()) * ss.spans.len();
                sizes.scope_version_bytes += ss.scope.as_ref().map_or(0, |s| s.version.len()) * ss.spans.len();
                for span in &ss.spans {
                    sizes.status_message_bytes += span.status.as_ref().map_or(0, |s| s.message.len());
                    // Most span attributes of common instrumentations go to dedicated columns:
                    // sizing the map for them would reserve what no row uses.
                    for kv in &span.attributes {
                        match index.get(kv.key.as_str()) {
                            Some(&i) => {
                                if let Some(any_value::Value::StringValue(v)) =
                                    kv.value.as_ref().and_then(|v| v.value.as_ref())
                                {
                                    sizes.semconv_bytes[i] += v.len();
                                }
                            }
                            None => sizes.attributes.add(kv),
                        }
                    }
                    sizes.events += span.events.len();
                    sizes.links += span.links.len();
                    for event in &span.events {
                        sizes.event_attributes.extend(AttrSizes::of(&event.attributes, 1));
                    }
                    for link in &span.links {
                        sizes.link_attributes.extend(AttrSizes::of(&link.attributes, 1));
                    }
                }
            }
        }
        sizes
    }
}

/// Why a span cannot be stored, or `Ok`.
fn validate(span: &Span) -> Result<(), String> {
    TraceId::from_bytes(&span.trace_id).map_err(|e| e.to_string())?;
    SpanId::from_bytes(&span.span_id).map_err(|e| e.to_string())?;
    if !span.parent_span_id.is_empty() {
        SpanId::from_bytes(&span.parent_span_id).map_err(|e| format!("parent {e}"))?;
    }
    if !(0..=5).contains(&span.kind) {
        return Err(format!("invalid kind {}", span.kind));
    }
    let status = span.status.as_ref().map_or(0, |s| s.code);
    if !(0..=2).contains(&status) {
        return Err(format!("invalid status code {status}"));
    }
    for (name, t) in
        [("start_time_unix_nano", span.start_time_unix_nano), ("end_time_unix_nano", span.end_time_unix_nano)]
    {
        if t > i64::MAX as u64 {
            return Err(format!("{name} {t} is beyond the year 2262"));
        }
    }
    for (i, event) in span.events.iter().enumerate() {
        if event.time_unix_nano > i64::MAX as u64 {
            return Err(format!("events[{i}].time_unix_nano {} is beyond the year 2262", event.time_unix_nano));
        }
    }
    for (i, link) in span.links.iter().enumerate() {
        TraceId::from_bytes(&link.trace_id).map_err(|e| format!("links[{i}]: {e}"))?;
        SpanId::from_bytes(&link.span_id).map_err(|e| format!("links[{i}]: {e}"))?;
    }
    Ok(())
}

/// Index of each dedicated semantic-convention attribute key in [`SEMCONV`].
/// Looked up once per attribute of every span: hashed with a fast hasher.
fn semconv_index() -> &'static HashMap<&'static str, usize, foldhash::fast::FixedState> {
    static INDEX: OnceLock<HashMap<&'static str, usize, foldhash::fast::FixedState>> = OnceLock::new();
    INDEX.get_or_init(|| SEMCONV.iter().enumerate().map(|(i, col)| (col.key, i)).collect())
}

enum SemconvBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
}

/// The builders of every stored column.
struct SpanColumns {
    rows: usize,
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    parent_span_id: FixedSizeBinaryBuilder,
    trace_state: StringBuilder,
    flags: UInt32Builder,
    service_name: StringDictionaryBuilder<Int32Type>,
    name: StringDictionaryBuilder<Int32Type>,
    kind: Int8Builder,
    start_time: TimestampNanosecondBuilder,
    end_time: TimestampNanosecondBuilder,
    duration_ns: Int64Builder,
    status_code: Int8Builder,
    status_message: StringBuilder,
    semconv: Vec<SemconvBuilder>,
    attributes: AttributeColumn,
    dropped_attributes: UInt32Builder,
    events: EventColumn,
    dropped_events: UInt32Builder,
    links: LinkColumn,
    dropped_links: UInt32Builder,
    resource_attributes: AttributeColumn,
    resource_dropped: UInt32Builder,
    resource_schema_url: StringBuilder,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    scope_attributes: AttributeColumn,
    scope_dropped: UInt32Builder,
    scope_schema_url: StringBuilder,
}

impl SpanColumns {
    fn with_capacity(sizes: &Sizes) -> Self {
        let n = sizes.spans;
        Self {
            rows: 0,
            trace_id: FixedSizeBinaryBuilder::with_capacity(n, 16),
            span_id: FixedSizeBinaryBuilder::with_capacity(n, 8),
            parent_span_id: FixedSizeBinaryBuilder::with_capacity(n, 8),
            trace_state: StringBuilder::with_capacity(n, 0),
            flags: UInt32Builder::with_capacity(n),
            service_name: StringDictionaryBuilder::with_capacity(n, 4, 64),
            name: StringDictionaryBuilder::with_capacity(n, 16, 256),
            kind: Int8Builder::with_capacity(n),
            start_time: TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC"),
            end_time: TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC"),
            duration_ns: Int64Builder::with_capacity(n),
            status_code: Int8Builder::with_capacity(n),
            status_message: StringBuilder::with_capacity(n, sizes.status_message_bytes),
            semconv: SEMCONV
                .iter()
                .zip(&sizes.semconv_bytes)
                .map(|(col, &bytes)| match col.ty {
                    SemconvType::Str => SemconvBuilder::Str(StringBuilder::with_capacity(n, bytes)),
                    SemconvType::Int => SemconvBuilder::Int(Int64Builder::with_capacity(n)),
                })
                .collect(),
            attributes: AttributeColumn::with_capacity(n, sizes.attributes),
            dropped_attributes: UInt32Builder::with_capacity(n),
            events: EventColumn::with_capacity(n, sizes.events, sizes.event_attributes),
            dropped_events: UInt32Builder::with_capacity(n),
            links: LinkColumn::with_capacity(n, sizes.links, sizes.link_attributes),
            dropped_links: UInt32Builder::with_capacity(n),
            resource_attributes: AttributeColumn::with_capacity(n, sizes.resource_attributes),
            resource_dropped: UInt32Builder::with_capacity(n),
            resource_schema_url: StringBuilder::with_capacity(n, 0),
            scope_name: StringBuilder::with_capacity(n, sizes.scope_name_bytes),
            scope_version: StringBuilder::with_capacity(n, sizes.scope_version_bytes),
            scope_attributes: AttributeColumn::with_capacity(n, sizes.scope_attributes),
            scope_dropped: UInt32Builder::with_capacity(n),
            scope_schema_url: StringBuilder::with_capacity(n, 0),
        }
    }

    /// Appends the span's own fields; the span must have passed [`validate`].
    fn append_span(&mut self, span: &Span, service_name: &str) {
        self.rows += 1;
        self.trace_id.append_value(&span.trace_id).expect("validated length");
        self.span_id.append_value(&span.span_id).expect("validated length");
        if span.parent_span_id.is_empty() {
            self.parent_span_id.append_null();
        } else {
            self.parent_span_id.append_value(&span.parent_span_id).expect("validated length");
        }
        self.trace_state.append_value(&span.trace_state);
        self.flags.append_value(span.flags);
        self.service_name.append_value(service_name);
        self.name.append_value(&span.name);
        self.kind.append_value(span.kind as i8);
        let start = span.start_time_unix_nano as i64;
        let end = span.end_time_unix_nano as i64;
        self.start_time.append_value(start);
        self.end_time.append_value(end);
        self.duration_ns.append_value(end.wrapping_sub(start));
        let status = span.status.as_ref();
        self.status_code.append_value(status.map_or(spans::status::UNSET, |s| s.code as i8));
        self.status_message.append_value(status.map_or("", |s| s.message.as_str()));

        // Dedicated columns take the first value of the expected type; everything else stays in
        // the attribute map, so nothing sent is lost.
        let index = semconv_index();
        let mut dedicated: [Option<&any_value::Value>; SEMCONV.len()] = [None; SEMCONV.len()];
        let mut rest: Vec<&KeyValue> = Vec::with_capacity(span.attributes.len());
        for kv in &span.attributes {
            let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
            let slot = index.get(kv.key.as_str()).copied().filter(|&i| {
                dedicated[i].is_none()
                    && matches!(
                        (SEMCONV[i].ty, value),
                        (SemconvType::Str, Some(any_value::Value::StringValue(_)))
                            | (SemconvType::Int, Some(any_value::Value::IntValue(_)))
                    )
            });
            match slot {
                Some(i) => dedicated[i] = value,
                None => rest.push(kv),
            }
        }
        for (builder, value) in self.semconv.iter_mut().zip(dedicated) {
            match (builder, value) {
                (SemconvBuilder::Str(b), Some(any_value::Value::StringValue(s))) => b.append_value(s),
                (SemconvBuilder::Int(b), Some(any_value::Value::IntValue(i))) => b.append_value(*i),
                (SemconvBuilder::Str(b), _) => b.append_null(),
                (SemconvBuilder::Int(b), _) => b.append_null(),
            }
        }
        self.attributes.append(rest);
        self.dropped_attributes.append_value(span.dropped_attributes_count);

        for event in &span.events {
            self.events.time.append_value(event.time_unix_nano as i64);
            self.events.name.append_value(&event.name);
            self.events.attributes.append(&event.attributes);
            self.events.dropped.append_value(event.dropped_attributes_count);
        }
        self.events.offsets.push(self.events.offsets.last().copied().unwrap_or(0) + span.events.len() as i32);
        self.dropped_events.append_value(span.dropped_events_count);

        for link in &span.links {
            self.links.trace_id.append_value(&link.trace_id).expect("validated length");
            self.links.span_id.append_value(&link.span_id).expect("validated length");
            self.links.trace_state.append_value(&link.trace_state);
            self.links.flags.append_value(link.flags);
            self.links.attributes.append(&link.attributes);
            self.links.dropped.append_value(link.dropped_attributes_count);
        }
        self.links.offsets.push(self.links.offsets.last().copied().unwrap_or(0) + span.links.len() as i32);
        self.dropped_links.append_value(span.dropped_links_count);
    }

    fn finish(mut self) -> Result<RecordBatch, IngestError> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent_span_id.finish()),
            Arc::new(self.trace_state.finish()),
            Arc::new(self.flags.finish()),
            Arc::new(self.service_name.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.start_time.finish()),
            Arc::new(self.end_time.finish()),
            Arc::new(self.duration_ns.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.status_message.finish()),
        ];
        for builder in &mut self.semconv {
            columns.push(match builder {
                SemconvBuilder::Str(b) => Arc::new(b.finish()),
                SemconvBuilder::Int(b) => Arc::new(b.finish()),
            });
        }
        columns.extend([
            self.attributes.finish(),
            Arc::new(self.dropped_attributes.finish()) as ArrayRef,
            self.events.finish(),
            Arc::new(self.dropped_events.finish()),
            self.links.finish(),
            Arc::new(self.dropped_links.finish()),
            self.resource_attributes.finish(),
            Arc::new(self.resource_dropped.finish()),
            Arc::new(self.resource_schema_url.finish()),
            Arc::new(self.scope_name.finish()),
            Arc::new(self.scope_version.finish()),
            self.scope_attributes.finish(),
            Arc::new(self.scope_dropped.finish()),
            Arc::new(self.scope_schema_url.finish()),
        ]);
        let schema: SchemaRef = span_schema();
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// An attribute map column being built: one map per row.
struct AttributeColumn {
    offsets: Vec<i32>,
    keys: StringBuilder,
    str: StringBuilder,
    int: Int64Builder,
    double: Float64Builder,
    bool: BooleanBuilder,
    bytes: BinaryBuilder,
    array: StringBuilder,
    kvlist: StringBuilder,
}

impl AttributeColumn {
    /// Room for `rows` maps holding the entries `sizes` counts. A map with more grows its builders.
    fn with_capacity(rows: usize, sizes: AttrSizes) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        let entries = sizes.entries;
        Self {
            offsets,
            keys: StringBuilder::with_capacity(entries, sizes.key_bytes),
            str: StringBuilder::with_capacity(entries, sizes.str_bytes),
            int: Int64Builder::with_capacity(entries),
            double: Float64Builder::with_capacity(entries),
            bool: BooleanBuilder::with_capacity(entries),
            bytes: BinaryBuilder::with_capacity(entries, 0),
            array: StringBuilder::with_capacity(entries, 0),
            kvlist: StringBuilder::with_capacity(entries, 0),
        }
    }

    /// Appends one row: a map holding `attrs`.
    fn append<'a>(&mut self, attrs: impl IntoIterator<Item = &'a KeyValue>) {
        let mut len = 0;
        for kv in attrs {
            len += 1;
            self.keys.append_value(&kv.key);
            self.append_value(kv.value.as_ref().and_then(|v| v.value.as_ref()));
        }
        self.offsets.push(self.offsets.last().copied().unwrap_or(0) + len);
    }

    fn append_value(&mut self, value: Option<&any_value::Value>) {
        use any_value::Value as V;
        let (mut s, mut i, mut d, mut b, mut y, mut a, mut k) = (None, None, None, None, None, None, None);
        match value {
            Some(V::StringValue(v)) => s = Some(v.as_str()),
            Some(V::IntValue(v)) => i = Some(*v),
            Some(V::DoubleValue(v)) => d = Some(*v),
            Some(V::BoolValue(v)) => b = Some(*v),
            Some(V::BytesValue(v)) => y = Some(v.as_slice()),
            Some(V::ArrayValue(v)) => {
                a = Some(array_to_json_text(&v.values.iter().map(attr_value).collect::<Vec<_>>()))
            }
            Some(V::KvlistValue(v)) => k = Some(kvlist_to_json_text(&kvlist(&v.values))),
            // A profiles-only string-table reference means nothing outside profiles: stored empty,
            // as the OTLP specification asks receivers of other signals to do.
            Some(V::StringValueStrindex(_)) | None => {}
        }
        self.str.append_option(s);
        self.int.append_option(i);
        self.double.append_option(d);
        self.bool.append_option(b);
        self.bytes.append_option(y);
        self.array.append_option(a);
        self.kvlist.append_option(k);
    }

    fn finish(&mut self) -> ArrayRef {
        let values = StructArray::new(
            spans::value_fields(),
            vec![
                Arc::new(self.str.finish()),
                Arc::new(self.int.finish()),
                Arc::new(self.double.finish()),
                Arc::new(self.bool.finish()),
                Arc::new(self.bytes.finish()),
                Arc::new(self.array.finish()),
                Arc::new(self.kvlist.finish()),
            ],
            None,
        );
        let entries_field = spans::map_entries_field();
        let arrow::datatypes::DataType::Struct(entry_fields) = entries_field.data_type() else {
            unreachable!("map entries are a struct")
        };
        let entries =
            StructArray::new(entry_fields.clone(), vec![Arc::new(self.keys.finish()), Arc::new(values)], None);
        let offsets = OffsetBuffer::new(std::mem::take(&mut self.offsets).into());
        Arc::new(MapArray::new(entries_field, offsets, entries, None, false))
    }
}

struct EventColumn {
    offsets: Vec<i32>,
    time: TimestampNanosecondBuilder,
    name: StringBuilder,
    attributes: AttributeColumn,
    dropped: UInt32Builder,
}

impl EventColumn {
    /// Room for `rows` spans holding `events` events with the attributes `attributes` counts.
    fn with_capacity(rows: usize, events: usize, attributes: AttrSizes) -> Self {
        Self {
            offsets: Vec::with_capacity(rows),
            time: TimestampNanosecondBuilder::with_capacity(events),
            name: StringBuilder::with_capacity(events, events * 16),
            attributes: AttributeColumn::with_capacity(events, attributes),
            dropped: UInt32Builder::with_capacity(events),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        let items = StructArray::new(
            event_fields(),
            vec![
                Arc::new(self.time.finish().with_timezone("UTC")),
                Arc::new(self.name.finish()),
                self.attributes.finish(),
                Arc::new(self.dropped.finish()),
            ],
            None,
        );
        list(spans::event_item_field(), &mut self.offsets, items)
    }
}

struct LinkColumn {
    offsets: Vec<i32>,
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    trace_state: StringBuilder,
    flags: UInt32Builder,
    attributes: AttributeColumn,
    dropped: UInt32Builder,
}

impl LinkColumn {
    /// Room for `rows` spans holding `links` links with the attributes `attributes` counts.
    fn with_capacity(rows: usize, links: usize, attributes: AttrSizes) -> Self {
        Self {
            offsets: Vec::with_capacity(rows),
            trace_id: FixedSizeBinaryBuilder::with_capacity(links, 16),
            span_id: FixedSizeBinaryBuilder::with_capacity(links, 8),
            trace_state: StringBuilder::with_capacity(links, 0),
            flags: UInt32Builder::with_capacity(links),
            attributes: AttributeColumn::with_capacity(links, attributes),
            dropped: UInt32Builder::with_capacity(links),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        let items = StructArray::new(
            link_fields(),
            vec![
                Arc::new(self.trace_id.finish()),
                Arc::new(self.span_id.finish()),
                Arc::new(self.trace_state.finish()),
                Arc::new(self.flags.finish()),
                self.attributes.finish(),
                Arc::new(self.dropped.finish()),
            ],
            None,
        );
        list(spans::link_item_field(), &mut self.offsets, items)
    }
}

/// A list column from per-row end offsets (without the leading zero) and the flattened items.
fn list(field: Arc<arrow::datatypes::Field>, ends: &mut Vec<i32>, items: StructArray) -> ArrayRef {
    let mut offsets = Vec::with_capacity(ends.len() + 1);
    offsets.push(0);
    offsets.append(ends);
    Arc::new(ListArray::new(field, OffsetBuffer::new(offsets.into()), Arc::new(items), None))
}

/// An OTLP value as an [`AttrValue`] (used for the nested array and kvlist forms).
pub fn attr_value(value: &AnyValue) -> AttrValue {
    use any_value::Value as V;
    match &value.value {
        None | Some(V::StringValueStrindex(_)) => AttrValue::Empty,
        Some(V::StringValue(s)) => AttrValue::Str(s.clone()),
        Some(V::IntValue(i)) => AttrValue::Int(*i),
        Some(V::DoubleValue(d)) => AttrValue::Double(*d),
        Some(V::BoolValue(b)) => AttrValue::Bool(*b),
        Some(V::BytesValue(b)) => AttrValue::Bytes(b.clone()),
        Some(V::ArrayValue(a)) => AttrValue::Array(a.values.iter().map(attr_value).collect()),
        Some(V::KvlistValue(kv)) => AttrValue::KvList(kvlist(&kv.values)),
    }
}

fn kvlist(kvs: &[KeyValue]) -> Vec<(String, AttrValue)> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(AttrValue::Empty, attr_value))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, UInt32Array};
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::Event;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    fn string(s: &str) -> any_value::Value {
        any_value::Value::StringValue(s.to_owned())
    }

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), key_strindex: 0 }
    }

    fn span(attributes: Vec<KeyValue>, events: Vec<Event>) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "op".into(),
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes,
            events,
            ..Default::default()
        }
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource { attributes: vec![kv("service.name", string("svc"))], ..Default::default() }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    /// The trace buffer counts a batch by the bytes its rows use (`buffer::batch_bytes`), and holds
    /// its buffers whole: they must not be much larger, whatever goes to dedicated columns.
    #[test]
    fn a_batch_holds_little_more_than_its_rows_use() {
        let spans: Vec<Span> = (0..500u32)
            .map(|i| {
                let mut attributes: Vec<KeyValue> = c::SEMCONV
                    .iter()
                    .filter(|col| col.ty == SemconvType::Str)
                    .map(|col| kv(col.key, string(&format!("{}-{i}", col.key))))
                    .collect();
                attributes.push(kv("custom", string("x")));
                span(attributes, Vec::new())
            })
            .collect();
        let mut request = request(spans);
        let resource = request.resource_spans[0].resource.as_mut().unwrap();
        for i in 0..8 {
            resource.attributes.push(kv(&format!("host.label.{i}"), string(&format!("value-{i}"))));
        }
        let batch = convert_request(&request, &SpanLimits::default()).unwrap().batch.unwrap();
        let (used, held): (usize, usize) = batch
            .columns()
            .iter()
            .map(|column| (column.to_data().get_slice_memory_size().unwrap(), column.get_array_memory_size()))
            .fold((0, 0), |(u, h), (cu, ch)| (u + cu, h + ch));
        assert!(held * 10 <= used * 12, "the batch holds {held} bytes for {used} used");
    }

    /// The string values of the span attribute map of row 0, in order.
    fn stored_attributes(batch: &RecordBatch) -> Vec<(String, Option<String>)> {
        let map = batch.column_by_name(c::ATTRIBUTES).unwrap().as_map();
        let entries = map.value(0);
        let keys = entries.column(0).as_string::<i32>();
        let values = entries.column(1).as_struct();
        let strings = values.column(0).as_string::<i32>();
        (0..keys.len())
            .map(|i| (keys.value(i).to_owned(), strings.is_valid(i).then(|| strings.value(i).to_owned())))
            .collect()
    }

    #[test]
    fn strings_are_cut_at_a_character_boundary() {
        for (input, max, expected) in [("abcdef", 4, "abcd"), ("éééé", 5, "éé"), ("ab", 4, "ab"), ("é", 1, "")] {
            let mut s = input.to_owned();
            truncate_str(&mut s, max);
            assert_eq!(s, expected, "{input:?} to {max}");
        }
    }

    #[test]
    fn arrays_and_lists_keep_the_leading_elements_that_fit() {
        let array = |items: &[&str]| {
            any_value::Value::ArrayValue(ArrayValue {
                values: items.iter().map(|s| AnyValue { value: Some(string(s)) }).collect(),
            })
        };
        let mut value = array(&["aaaa", "bbbb", "cccc"]);
        cap_value(&mut value, 10);
        assert_eq!(value, array(&["aaaa", "bbbb", "cc"]));
        assert_eq!(value_bytes(&value), 10);

        let mut list = any_value::Value::KvlistValue(KeyValueList {
            values: vec![kv("k1", string("vvvv")), kv("k2", string("wwww"))],
        });
        cap_value(&mut list, 9);
        let any_value::Value::KvlistValue(kept) = &list else { unreachable!() };
        assert_eq!(kept.values, vec![kv("k1", string("vvvv")), kv("k2", string("w"))]);
        assert_eq!(value_bytes(&list), 9);
    }

    #[test]
    fn spans_within_the_limits_are_stored_as_sent_and_oversized_values_are_truncated() {
        let limits = SpanLimits { max_value_bytes: 8, max_span_bytes: 1 << 20 };
        let sent = span(vec![kv("short", string("12345678")), kv("long", string("123456789abc"))], vec![]);
        let converted = convert_request(&request(vec![sent]), &limits).unwrap();
        assert_eq!((converted.accepted, converted.rejected, converted.truncated_values), (1, 0, 1));
        let batch = converted.batch.unwrap();
        assert_eq!(
            stored_attributes(&batch),
            [("short".to_owned(), Some("12345678".to_owned())), ("long".to_owned(), Some("12345678".to_owned()))]
        );
        let message = converted.error_message.unwrap();
        assert!(
            message.contains("truncated 1 value(s) longer than 8 bytes")
                && message
                    .contains("resourceSpans[0].scopeSpans[0].spans[0] attributes attribute \"long\" of 12 bytes"),
            "{message}"
        );

        let within = convert_request(&request(vec![span(vec![kv("a", string("b"))], vec![])]), &limits).unwrap();
        assert_eq!((within.truncated_values, within.trimmed_spans, within.error_message), (0, 0, None));
    }

    #[test]
    fn an_oversized_span_keeps_semantic_convention_attributes_first_and_counts_what_it_drops() {
        // Each of these attributes counts 1 + 10 bytes; the event 5 + 0.
        let attributes = vec![
            kv("a", string("0123456789")),
            kv("b", string("0123456789")),
            kv(c::SEMCONV[0].key, string("0123456789")),
        ];
        let key_len = c::SEMCONV[0].key.len();
        let events = vec![Event { name: "event".into(), ..Default::default() }];
        // Room for the semantic-convention attribute and one other, not the event.
        let limits = SpanLimits { max_value_bytes: 64, max_span_bytes: key_len + 10 + 11 + 4 };
        let converted = convert_request(&request(vec![span(attributes, events)]), &limits).unwrap();
        assert_eq!(converted.trimmed_spans, 1);
        let batch = converted.batch.unwrap();
        // The dedicated attribute moved to its column; "a" fits, "b" does not.
        assert_eq!(stored_attributes(&batch), [("a".to_owned(), Some("0123456789".to_owned()))]);
        let dedicated = batch.column_by_name(c::SEMCONV[0].column).unwrap();
        assert!(dedicated.is_valid(0));
        let dropped =
            |name: &str| batch.column_by_name(name).unwrap().as_any().downcast_ref::<UInt32Array>().unwrap().value(0);
        assert_eq!((dropped(c::DROPPED_ATTRIBUTES_COUNT), dropped(c::DROPPED_EVENTS_COUNT)), (1, 1));
        assert!(converted.error_message.unwrap().contains("1 span(s) held more than"));
    }
}
