//! Recording [`Event`]s (like `kubectl get events`) from controllers and agents.
//!
//! A repeat of the same reason and message about the same object within a short window bumps
//! the existing event's `count` and `lastTime` instead of creating another, as Kubernetes'
//! recorder aggregates.

use crate::time::timestamp;
use crate::{
    Client,
    v1::{Event, Object, ObjectMeta, ObjectReference},
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

/// `Event.type` values.
pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

/// How long a repeated event is folded into the previous one.
const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);

/// Recently emitted events: (kind, name, reason, message) → (event name, count, first seen).
type Recent = HashMap<(String, String, String, String), (String, u32, SystemTime)>;

/// Emits events on behalf of one component (`scheduler`, `agent/node-1`). Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    source: String,
    /// (kind, name, reason, message) → (event name, count, when first recorded here).
    recent: Arc<Mutex<Recent>>,
}

impl Recorder {
    pub fn new(client: Client, source: impl Into<String>) -> Recorder {
        Recorder {
            client,
            source: source.into(),
            recent: Default::default(),
        }
    }

    /// Records an event about `about`. Failures are logged by the caller's choice: recording
    /// is best effort and never fails the work it describes.
    pub async fn emit(
        &self,
        about: &Object,
        ty: &str,
        reason: &str,
        message: impl Into<String>,
    ) -> Result<(), tonic::Status> {
        #[allow(clippy::disallowed_methods)] // Events carry wall-clock times.
        let now = SystemTime::now();
        let message = message.into();
        let kind = about
            .kind()
            .map(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        let name = about.name().to_string();
        let key = (
            kind.clone(),
            name.clone(),
            reason.to_string(),
            message.clone(),
        );
        let previous = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.retain(|_, (_, _, at)| {
                now.duration_since(*at).unwrap_or_default() < AGGREGATE_WINDOW
            });
            recent.get(&key).cloned()
        };
        if let Some((event_name, count, _)) = previous
            && let Ok(mut live) = self.client.get(crate::Kind::Event, &event_name).await
            && let Some(crate::v1::object::Resource::Event(e)) = &mut live.resource
        {
            e.count = count + 1;
            e.last_time = Some(timestamp(now));
            if self.client.update(live).await.is_ok() {
                let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(entry) = recent.get_mut(&key) {
                    entry.1 = count + 1;
                }
                return Ok(());
            }
        }
        let event = Event {
            metadata: Some(ObjectMeta {
                generate_name: format!("{name}."),
                ..Default::default()
            }),
            involved_object: Some(ObjectReference {
                kind,
                name,
                uid: about.metadata().map(|m| m.uid.clone()).unwrap_or_default(),
            }),
            r#type: ty.into(),
            reason: reason.into(),
            message,
            source: self.source.clone(),
            count: 1,
            first_time: Some(timestamp(now)),
            last_time: Some(timestamp(now)),
        };
        let created = self.client.create(event.into()).await?;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.insert(key, (created.name().to_string(), 1, now));
        Ok(())
    }
}
