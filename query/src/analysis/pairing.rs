//! The `edges` table: every hop of every trace, paired per design.md §4 by
//! [`hopscope_derive::edges::EdgePairing`].
//!
//! It is read from the edges the ingester derived ([`crate::walk::StoredTable`]), or derived at
//! query time ([`crate::walk::DerivedTable`]: the reference): the spans of the asked time range are
//! read in trace order and each trace's spans paired in memory. Pairing needs both sides of a call,
//! so the span scan is widened by [`PAIRING_SLACK_NS`] on both sides of the asked range; the exact
//! range is then applied to the edges' own `start_time`.

use std::sync::Arc;

use hopscope_derive::edges::{EdgePairing, Pending, edges_schema, stored_edges_schema};
pub(crate) use hopscope_derive::edges::{PAIRING_SLACK_NS, input_columns};

use crate::walk::Derivation;

/// The `edges` table.
pub(crate) fn derivation() -> Derivation<Pending> {
    Derivation {
        name: crate::tables::EDGES,
        schema: edges_schema(),
        input_columns: input_columns(),
        slack_ns: PAIRING_SLACK_NS,
        factory: Arc::new(|| Box::new(EdgePairing::default())),
    }
}

/// The `edges` rows as the ingester stores them (with the rows pending on other traces), derived
/// from spans: for traces the stored files do not hold whole.
pub(crate) fn storing_derivation() -> Derivation<Pending> {
    Derivation {
        name: crate::tables::EDGES,
        schema: stored_edges_schema(),
        input_columns: input_columns(),
        slack_ns: PAIRING_SLACK_NS,
        factory: Arc::new(|| Box::new(EdgePairing::storing())),
    }
}

#[cfg(test)]
mod tests {
    use hopscope_schemas::columns::semconv as sc;
    use hopscope_schemas::fixture::SpanRow;
    use hopscope_schemas::spans::kind::{CLIENT, CONSUMER, INTERNAL, PRODUCER, SERVER};
    use hopscope_schemas::spans::status::ERROR;

    use crate::testing::{Store, ms, query, span, trace};

    /// One expected hop: caller, callee, connection, callee kind, client / server duration and gap
    /// in ms (`None`: not known), error, depth.
    type Hop =
        (&'static str, &'static str, &'static str, &'static str, Option<f64>, Option<f64>, Option<f64>, bool, i64);

    fn text(ms: Option<f64>) -> String {
        ms.map_or_else(|| "NULL".to_owned(), |ms| ((ms * 1e6) as i64).to_string())
    }

    /// The hops the `edges` table pairs from `rows` (one file), against `expected`, whatever the
    /// partitioning.
    async fn assert_hops(case: &str, rows: Vec<SpanRow>, expected: &[Hop]) {
        let store = Store::with_files(&[rows]);
        let want: Vec<Vec<String>> = expected
            .iter()
            .map(|(caller, callee, connection, callee_kind, client, server, gap, error, depth)| {
                vec![
                    caller.to_string(),
                    callee.to_string(),
                    connection.to_string(),
                    callee_kind.to_string(),
                    text(*client),
                    text(*server),
                    text(*gap),
                    error.to_string(),
                    depth.to_string(),
                ]
            })
            .collect();
        for partitions in [1, 3] {
            let engine = store.engine(partitions, 8192);
            let got = query(
                &engine,
                "SELECT caller, callee, connection, callee_kind, client_duration_ns, server_duration_ns, gap_ns, \
                 error, depth FROM edges ORDER BY start_time, caller, callee",
            )
            .await;
            assert_eq!(got, want, "{case}, {partitions} partitions");
        }
    }

    #[tokio::test]
    async fn each_pairing_rule_of_the_design() {
        let t = trace(1);
        let root =
            |name: &str, service: &str| SpanRow::new(t, span(1), service, name, SERVER).during(ms(0.0), ms(100.0));

        // A CLIENT span and its SERVER child: client and server time, the gap, an error on either side.
        assert_hops(
            "client and server",
            vec![
                root("GET /checkout", "gateway"),
                SpanRow::new(t, span(2), "gateway", "POST /pay", CLIENT).child_of(span(1)).during(ms(10.0), ms(60.0)),
                SpanRow::new(t, span(3), "payments", "POST /pay", SERVER)
                    .child_of(span(2))
                    .during(ms(15.0), ms(55.0))
                    .status(ERROR),
            ],
            &[
                ("user", "gateway", "entry", "service", None, Some(100.0), None, false, 1),
                ("gateway", "payments", "rpc", "service", Some(50.0), Some(40.0), Some(10.0), true, 2),
            ],
        )
        .await;

        // A CLIENT span with no SERVER child: a virtual node, named by the first attribute that is set
        // (peer.service, db.system + namespace, messaging system/destination, server.address:port,
        // network.peer.address, the host of url.full) and typed by what it is.
        let call = |id: u8, at: f64| {
            SpanRow::new(t, span(id), "api", "call", CLIENT).child_of(span(1)).during(ms(at), ms(at + 5.0))
        };
        assert_hops(
            "uninstrumented peers",
            vec![
                root("GET /", "api"),
                call(2, 1.0).with(sc::PEER_SERVICE, "billing").with(sc::DB_SYSTEM, "mysql"),
                call(3, 2.0).with(sc::DB_SYSTEM, "postgresql").with(sc::DB_NAMESPACE, "shop"),
                call(4, 3.0).with(sc::DB_SYSTEM, "redis").with(sc::SERVER_ADDRESS, "cache-1"),
                call(5, 4.0).with(sc::MESSAGING_SYSTEM, "kafka").with(sc::MESSAGING_DESTINATION_NAME, "orders"),
                call(6, 5.0).with(sc::SERVER_ADDRESS, "api.stripe.com").with(sc::SERVER_PORT, "443"),
                call(7, 6.0).with(sc::NETWORK_PEER_ADDRESS, "10.0.0.7").with(sc::URL_FULL, "http://ignored/"),
                call(8, 7.0).with(sc::URL_FULL, "https://user@example.com:8443/pay?x=1"),
                call(9, 8.0).with(sc::RPC_SYSTEM, "grpc").with(sc::SERVER_ADDRESS, "inventory"),
            ],
            &[
                ("user", "api", "entry", "service", None, Some(100.0), None, false, 1),
                ("api", "billing", "uninstrumented", "database", Some(5.0), None, None, false, 2),
                ("api", "postgresql/shop", "uninstrumented", "database", Some(5.0), None, None, false, 2),
                ("api", "redis", "uninstrumented", "cache", Some(5.0), None, None, false, 2),
                ("api", "kafka/orders", "uninstrumented", "messaging", Some(5.0), None, None, false, 2),
                ("api", "api.stripe.com:443", "uninstrumented", "external", Some(5.0), None, None, false, 2),
                ("api", "10.0.0.7", "uninstrumented", "external", Some(5.0), None, None, false, 2),
                ("api", "example.com", "uninstrumented", "external", Some(5.0), None, None, false, 2),
                ("api", "inventory", "uninstrumented", "rpc", Some(5.0), None, None, false, 2),
            ],
        )
        .await;

        // A PRODUCER and its CONSUMER child: a messaging hop; the gap is the time in the queue, from
        // the end of the send to the start of the processing.
        assert_hops(
            "producer and consumer child",
            vec![
                root("POST /order", "orders"),
                SpanRow::new(t, span(2), "orders", "publish", PRODUCER)
                    .child_of(span(1))
                    .during(ms(10.0), ms(12.0))
                    .with(sc::MESSAGING_SYSTEM, "kafka"),
                SpanRow::new(t, span(3), "billing", "process", CONSUMER).child_of(span(2)).during(ms(30.0), ms(45.0)),
            ],
            &[
                ("user", "orders", "entry", "service", None, Some(100.0), None, false, 1),
                ("orders", "billing", "messaging", "service", Some(2.0), Some(15.0), Some(18.0), false, 2),
            ],
        )
        .await;

        // A parent in another service, without span kinds that pair: the call is inferred, only the
        // child's duration is known.
        assert_hops(
            "inferred",
            vec![
                root("GET /report", "frontend"),
                SpanRow::new(t, span(2), "reports", "render", INTERNAL).child_of(span(1)).during(ms(20.0), ms(70.0)),
            ],
            &[
                ("user", "frontend", "entry", "service", None, Some(100.0), None, false, 1),
                ("frontend", "reports", "inferred", "service", None, Some(50.0), None, false, 2),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn a_consumer_in_another_trace_is_paired_with_the_producer_it_links_to() {
        // The two traces at both ends of the trace-id space: partitions of a split walk each see one.
        let (first, last) = (trace(0x01), trace(0xfe));
        let rows = vec![
            SpanRow::new(first, span(1), "api", "POST /order", SERVER).during(ms(0.0), ms(20.0)),
            SpanRow::new(first, span(2), "api", "publish", PRODUCER)
                .child_of(span(1))
                .during(ms(5.0), ms(6.0))
                .with(sc::MESSAGING_SYSTEM, "kafka")
                .with(sc::MESSAGING_DESTINATION_NAME, "orders"),
            SpanRow::new(last, span(3), "worker", "process", CONSUMER)
                .during(ms(40.0), ms(90.0))
                .linked_to(first, span(2)),
        ];
        assert_hops(
            "linked consumer",
            rows,
            &[
                ("user", "api", "entry", "service", None, Some(20.0), None, false, 1),
                ("api", "worker", "messaging", "service", Some(1.0), Some(50.0), Some(34.0), false, 2),
            ],
        )
        .await;
    }
}
