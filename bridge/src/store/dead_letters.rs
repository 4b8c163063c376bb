//! Operator actions on dead letters. Each is written to the audit log in
//! the same transaction.

use super::sql::query;
use super::{Store, StoreError};

impl Store {
    /// Marks dead letters discarded and drops their payloads (the operator
    /// decided they will not be delivered; the client data goes).
    /// Returns how many were open.
    pub async fn discard_dead_letters(
        &self,
        ids: &[i64],
        actor: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut n = 0;
        for id in ids {
            n += query(
                self.backend,
                "UPDATE dead_letters SET state = 'discarded', resolved_at = $1, payload = NULL, headers = NULL, detail = NULL \
                 WHERE id = $2 AND state = 'open'"
                    .to_owned(),
                vec![now.into(), (*id).into()],
            )
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // A parked FHIR bundle holds the same client data: it goes too.
            query(
                self.backend,
                "UPDATE fhir_outbox SET bundle = NULL WHERE state = 'dead' AND id IN ( \
                 SELECT CAST(SUBSTR(message_id, 8) AS BIGINT) FROM dead_letters \
                 WHERE id = $1 AND stage = 'fhir' AND message_id LIKE 'outbox:%')"
                    .to_owned(),
                vec![(*id).into()],
            )
            .execute(&mut *tx)
            .await?;
            self.audit_in(
                &mut tx,
                actor,
                "dead_letter.discard",
                &format!("dead_letter:{id}"),
                None,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Records that a dead letter was replayed: `resolved` when the replay
    /// went through, still open (with its count raised) when it was parked
    /// again.
    pub async fn mark_replayed(
        &self,
        id: i64,
        resolved: bool,
        actor: &str,
        detail: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // Only an open letter changes: a concurrent replay or discard that
        // got there first keeps its state.
        query(
            self.backend,
            "UPDATE dead_letters SET replay_count = replay_count + 1, \
             state = CASE WHEN $1 = 1 THEN 'replayed' ELSE state END, \
             resolved_at = CASE WHEN $2 = 1 THEN $3 ELSE resolved_at END WHERE id = $4 AND state = 'open'"
                .to_owned(),
            vec![i64::from(resolved).into(), i64::from(resolved).into(), now.into(), id.into()],
        )
        .execute(&mut *tx)
        .await?;
        self.audit_in(
            &mut tx,
            actor,
            "dead_letter.replay",
            &format!("dead_letter:{id}"),
            Some(detail),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn audit_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        actor: &str,
        action: &str,
        target: &str,
        detail: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        query(
            self.backend,
            "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)"
                .to_owned(),
            vec![
                now.into(),
                actor.into(),
                action.into(),
                target.into(),
                detail.map(str::to_owned).into(),
            ],
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The audit log, newest first.
    pub async fn audit_log(
        &self,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, String, Option<String>)>, StoreError> {
        use sqlx::Row;
        let rows = query(
            self.backend,
            "SELECT at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT $1"
                .to_owned(),
            vec![limit.into()],
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                ))
            })
            .collect()
    }
}
