//! The `deliveries` table: each consumer span that names the message it consumed. A poison message
//! (one message consumed again and again, failing) shows only across traces, as each delivery is
//! usually a trace of its own; this table holds what counting them needs, a small share of the
//! spans, so that the question reads it instead of every span.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    BooleanBuilder, FixedSizeBinaryBuilder, Int64Builder, RecordBatch, StringBuilder, TimestampNanosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use hopscope_schemas::columns::{delivery as d, semconv};
use hopscope_schemas::spans::{kind, status, timestamp_type};

use crate::{PerTrace, Result, SpanColumns};

/// The schema of the `deliveries` table.
pub fn deliveries_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(d::TRACE_ID, DataType::FixedSizeBinary(16), false),
                Field::new(d::SPAN_ID, DataType::FixedSizeBinary(8), false),
                Field::new(d::START_TIME, timestamp_type(), false),
                Field::new(d::SERVICE, DataType::Utf8, false),
                Field::new(d::OPERATION, DataType::Utf8, false),
                Field::new(d::DESTINATION, DataType::Utf8, true),
                // Never null; nullable as the span column it is read from where a file has no
                // `deliveries` of its own.
                Field::new(d::MESSAGE_ID, DataType::Utf8, true),
                Field::new(d::ERROR, DataType::Boolean, false),
                Field::new(d::DURATION_NS, DataType::Int64, false),
            ]))
        })
        .clone()
}

/// Builds `deliveries` rows: one per span of kind CONSUMER with a non-empty
/// `messaging.message.id`, in the order the spans come.
pub struct Deliveries {
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    start_time: TimestampNanosecondBuilder,
    service: StringBuilder,
    operation: StringBuilder,
    destination: StringBuilder,
    message_id: StringBuilder,
    error: BooleanBuilder,
    duration_ns: Int64Builder,
    rows: usize,
}

impl Default for Deliveries {
    fn default() -> Self {
        Self {
            trace_id: FixedSizeBinaryBuilder::new(16),
            span_id: FixedSizeBinaryBuilder::new(8),
            start_time: TimestampNanosecondBuilder::new(),
            service: StringBuilder::new(),
            operation: StringBuilder::new(),
            destination: StringBuilder::new(),
            message_id: StringBuilder::new(),
            error: BooleanBuilder::new(),
            duration_ns: Int64Builder::new(),
            rows: 0,
        }
    }
}

impl PerTrace for Deliveries {
    type Deposit = ();

    fn trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> Result<()> {
        for row in rows {
            if spans.kind.value(row) != kind::CONSUMER {
                continue;
            }
            let Some(message) = spans.semconv(row, semconv::MESSAGING_MESSAGE_ID) else { continue };
            self.trace_id.append_value(spans.trace_id.value(row))?;
            self.span_id.append_value(spans.span_id.value(row))?;
            self.start_time.append_value(spans.start_ns.value(row));
            self.service.append_value(spans.service(row));
            self.operation.append_value(spans.name(row));
            self.destination.append_option(spans.semconv(row, semconv::MESSAGING_DESTINATION_NAME));
            self.message_id.append_value(message);
            self.error.append_value(spans.status_code.value(row) == status::ERROR);
            // As the span's stored `duration_ns` is computed.
            self.duration_ns.append_value(spans.end_ns.value(row).wrapping_sub(spans.start_ns.value(row)));
            self.rows += 1;
        }
        Ok(())
    }

    fn take_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        self.rows = 0;
        Ok(Some(RecordBatch::try_new(
            deliveries_schema(),
            vec![
                Arc::new(self.trace_id.finish()),
                Arc::new(self.span_id.finish()),
                Arc::new(self.start_time.finish().with_timezone("UTC")),
                Arc::new(self.service.finish()),
                Arc::new(self.operation.finish()),
                Arc::new(self.destination.finish()),
                Arc::new(self.message_id.finish()),
                Arc::new(self.error.finish()),
                Arc::new(self.duration_ns.finish()),
            ],
        )?))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use hopscope_schemas::fixture::{SpanRow, batch_of};
    use hopscope_schemas::spans::kind::{CONSUMER, PRODUCER, SERVER};

    use super::*;

    #[test]
    fn only_consumer_spans_naming_their_message_are_deliveries() {
        let trace = [7; 16];
        let ms = |n: i64| 1_700_000_000_000_000_000 + n * 1_000_000;
        let batch = batch_of(&[
            SpanRow::new(trace, [1; 8], "shop", "publish", PRODUCER)
                .during(ms(0), ms(1))
                .with(semconv::MESSAGING_MESSAGE_ID, "m-1"),
            SpanRow::new(trace, [2; 8], "billing", "process", CONSUMER)
                .during(ms(2), ms(9))
                .status(status::ERROR)
                .with(semconv::MESSAGING_MESSAGE_ID, "m-1")
                .with(semconv::MESSAGING_DESTINATION_NAME, "orders"),
            // No message id, or an empty one: not a delivery anyone can count.
            SpanRow::new(trace, [3; 8], "billing", "process", CONSUMER).during(ms(3), ms(4)),
            SpanRow::new(trace, [4; 8], "billing", "process", CONSUMER)
                .during(ms(4), ms(5))
                .with(semconv::MESSAGING_MESSAGE_ID, ""),
            SpanRow::new(trace, [5; 8], "audit", "consume", CONSUMER)
                .during(ms(5), ms(8))
                .with(semconv::MESSAGING_MESSAGE_ID, "m-2"),
            SpanRow::new(trace, [6; 8], "shop", "GET /", SERVER)
                .during(ms(6), ms(7))
                .with(semconv::MESSAGING_MESSAGE_ID, "m-3"),
        ])
        .unwrap();
        let spans = SpanColumns::new(&batch).unwrap();
        let mut deliveries = Deliveries::default();
        deliveries.trace(&spans, 0..batch.num_rows()).unwrap();
        let rows = deliveries.take_batch().unwrap().unwrap();
        assert_eq!(rows.num_rows(), 2);
        let text = |name: &str, row: usize| {
            let column = rows.column_by_name(name).unwrap().as_string::<i32>();
            column.is_valid(row).then(|| column.value(row).to_owned())
        };
        assert_eq!(rows.column_by_name(d::SPAN_ID).unwrap().as_fixed_size_binary().value(0), [2; 8]);
        assert_eq!(text(d::SERVICE, 0).as_deref(), Some("billing"));
        assert_eq!(text(d::MESSAGE_ID, 0).as_deref(), Some("m-1"));
        assert_eq!(text(d::DESTINATION, 0).as_deref(), Some("orders"));
        assert!(rows.column_by_name(d::ERROR).unwrap().as_boolean().value(0));
        assert_eq!(
            rows.column_by_name(d::DURATION_NS).unwrap().as_primitive::<arrow::datatypes::Int64Type>().value(0),
            7_000_000
        );
        assert_eq!(text(d::SERVICE, 1).as_deref(), Some("audit"));
        assert_eq!(text(d::DESTINATION, 1), None);
        assert!(!rows.column_by_name(d::ERROR).unwrap().as_boolean().value(1));
        // Taken: the next batch starts empty.
        assert!(deliveries.take_batch().unwrap().is_none());
    }
}
