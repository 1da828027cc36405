//! Dead letters: spans that could not be stored are kept with the reason, and replayed on request.

use std::sync::atomic::Ordering;

use super::Ingester;
use crate::IngestError;
use crate::dead_letter::{DeadLetter, DeadLetterStore};
use crate::metrics::level;
use crate::record::encode_batch;
use crate::wal::WalRecord;

impl Ingester {
    /// The dead-letter store of this data directory.
    pub fn dead_letters(&self) -> &DeadLetterStore {
        &self.dead_letters
    }

    /// Stores the spans of dead letter `id` again, as an export would (through the write-ahead
    /// log, so they are safe once this returns), then removes the entry. Spans that were stored
    /// meanwhile are dropped as resends.
    pub async fn replay_dead_letter(&self, id: &str) -> Result<DeadLetter, IngestError> {
        let _one_at_a_time = self.replaying.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(IngestError::ShuttingDown);
        }
        let store = self.dead_letters.clone();
        let owned_id = id.to_owned();
        let (entry, records) = tokio::task::spawn_blocking(move || {
            let entry = store.get(&owned_id)?;
            let records = store
                .spans(&owned_id)?
                .into_iter()
                .map(|batch| Ok((WalRecord::Spans(encode_batch(&batch)?.into()), batch)))
                .collect::<Result<Vec<_>, IngestError>>()?;
            Ok::<_, IngestError>((entry, records))
        })
        .await
        .map_err(|e| IngestError::Task(e.to_string()))??;
        let mut spans = 0;
        for (record, batch) in records {
            spans += batch.num_rows() as u64;
            self.wal.append(record, batch).await?;
        }
        let store = self.dead_letters.clone();
        let owned_id = id.to_owned();
        let left = tokio::task::spawn_blocking(move || {
            store.purge(&owned_id)?;
            store.count()
        })
        .await
        .map_err(|e| IngestError::Task(e.to_string()))??;
        self.metrics.dead_letters.set(level(left));
        self.metrics.spans_replayed_from_dead_letters.inc_by(spans);
        tracing::info!(id = %entry.id, spans, "dead letter replayed");
        Ok(entry)
    }

    /// Removes dead letter `id` for good.
    pub async fn purge_dead_letter(&self, id: &str) -> Result<DeadLetter, IngestError> {
        let (store, owned_id) = (self.dead_letters.clone(), id.to_owned());
        let (entry, left) =
            tokio::task::spawn_blocking(move || Ok::<_, IngestError>((store.purge(&owned_id)?, store.count()?)))
                .await
                .map_err(|e| IngestError::Task(e.to_string()))??;
        self.metrics.dead_letters.set(level(left));
        tracing::info!(id = %entry.id, "dead letter purged");
        Ok(entry)
    }

    /// Replays every replayable dead letter, oldest first; entries of damaged WAL bytes stay.
    pub async fn replay_all_dead_letters(&self) -> Result<Vec<DeadLetter>, IngestError> {
        let store = self.dead_letters.clone();
        let entries =
            tokio::task::spawn_blocking(move || store.list()).await.map_err(|e| IngestError::Task(e.to_string()))??;
        let mut replayed = Vec::new();
        for entry in entries.into_iter().filter(DeadLetter::replayable) {
            replayed.push(self.replay_dead_letter(&entry.id).await?);
        }
        Ok(replayed)
    }

    /// Counts a payload moved to the dead-letter store (blocking: counts the store's entries).
    pub(super) fn note_dead_letter(&self, entry: &DeadLetter) {
        let spans = entry.spans.unwrap_or(0);
        tracing::error!(id = %entry.id, spans, reason = %entry.reason, "spans moved to the dead-letter store; replay them with `hopscope dead-letters replay`");
        self.metrics.dead_lettered.inc();
        if let Ok(count) = self.dead_letters.count() {
            self.metrics.dead_letters.set(level(count));
        }
        self.metrics.dead_lettered_spans.inc_by(spans);
    }
}
