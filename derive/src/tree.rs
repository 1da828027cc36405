//! The span tree of one trace, which every per-trace analysis reads: each span's parent and
//! children within the trace, and spans by id.

use std::ops::Range;

use crate::columns::{SpanColumns, SpanIndex, span_key};

/// The tree of the trace in rows `rows` of a batch. Built once per trace and reused between traces
/// (its buffers keep their capacity). Rows are absolute indices into the batch.
#[derive(Debug, Default)]
pub struct TraceTree {
    rows: Range<usize>,
    by_id: SpanIndex,
    parents: Vec<Option<usize>>,
    children: Vec<Vec<usize>>,
}

impl TraceTree {
    /// Builds the tree of `rows`: a span's parent is the span of the trace whose id is its
    /// `parent_span_id` (the first with that id; never itself); children are in row order, which is
    /// start order.
    pub fn build(&mut self, spans: &SpanColumns, rows: Range<usize>) {
        self.rows = rows.clone();
        self.by_id.clear();
        for r in rows.clone() {
            if let Some(id) = span_key(spans.span_id.value(r)) {
                self.by_id.entry(id).or_insert(r);
            }
        }
        let len = rows.len();
        self.parents.clear();
        self.parents.extend(rows.clone().map(|r| {
            let id = span_key(spans.parent(r)?)?;
            self.by_id.get(&id).copied().filter(|&p| p != r)
        }));
        for list in &mut self.children {
            list.clear();
        }
        self.children.resize_with(len.max(self.children.len()), Vec::new);
        for r in rows.clone() {
            if let Some(p) = self.parents[r - rows.start] {
                self.children[p - rows.start].push(r);
            }
        }
    }

    /// The rows of the trace.
    pub fn rows(&self) -> Range<usize> {
        self.rows.clone()
    }

    /// The position of row `r` within the trace (0 for its first row).
    pub fn index(&self, r: usize) -> usize {
        r - self.rows.start
    }

    pub fn parent(&self, r: usize) -> Option<usize> {
        self.parents[r - self.rows.start]
    }

    pub fn children(&self, r: usize) -> &[usize] {
        &self.children[r - self.rows.start]
    }

    /// The row of the span with id `span_id`, if it is in the trace.
    pub fn find(&self, span_id: &[u8]) -> Option<usize> {
        self.by_id.get(&span_key(span_id)?).copied()
    }
}

#[cfg(test)]
mod tests {
    use hopscope_schemas::fixture::{SpanRow, batch_of};
    use hopscope_schemas::spans::kind::{CLIENT, SERVER};

    use super::*;

    #[test]
    fn parents_children_and_ids_of_one_trace_in_a_batch() {
        let t = [7; 16];
        let rows = [
            SpanRow::new([1; 16], [9; 8], "other", "x", SERVER),
            SpanRow::new(t, [1; 8], "a", "root", SERVER).during(0, 10),
            SpanRow::new(t, [2; 8], "a", "call", CLIENT).child_of([1; 8]).during(1, 5),
            SpanRow::new(t, [3; 8], "b", "serve", SERVER).child_of([2; 8]).during(2, 4),
            // Its own parent, and a parent outside the trace: both roots.
            SpanRow::new(t, [4; 8], "a", "loop", SERVER).child_of([4; 8]).during(6, 7),
            SpanRow::new(t, [5; 8], "a", "orphan", SERVER).child_of([9; 8]).during(8, 9),
        ];
        let batch = batch_of(&rows).unwrap();
        let spans = SpanColumns::new(&batch).unwrap();
        let mut tree = TraceTree::default();
        tree.build(&spans, 1..6);
        assert_eq!((tree.parent(1), tree.parent(2), tree.parent(3)), (None, Some(1), Some(2)));
        assert_eq!((tree.parent(4), tree.parent(5)), (None, None));
        assert_eq!((tree.children(1), tree.children(2), tree.children(3)), (&[2][..], &[3][..], &[][..]));
        assert_eq!((tree.find(&[3; 8]), tree.find(&[9; 8])), (Some(3), None));
        // Reused for the next trace: nothing of the previous one is left.
        tree.build(&spans, 0..1);
        assert_eq!((tree.parent(0), tree.children(0), tree.find(&[1; 8])), (None, &[][..], None));
    }
}
