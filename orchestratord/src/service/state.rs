//! Per-user desktop state: small JSON values by key (windows, wallpaper, preferences).

use policy::StateKey;
use serde::Serialize;

use super::{now, rfc3339, Actor, App, Result, ServiceError};
use crate::store::StateEntry;

/// Largest accepted value, in bytes of JSON text.
pub const MAX_VALUE: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateValue {
    pub key: String,
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    pub updated_at: String,
}

impl TryFrom<StateEntry> for StateValue {
    type Error = ServiceError;
    fn try_from(e: StateEntry) -> Result<Self> {
        let value = serde_json::from_str(&e.value).map_err(|err| {
            ServiceError::Store(crate::store::StoreError::Corrupt(format!(
                "state {}: {err}",
                e.key
            )))
        })?;
        Ok(StateValue {
            key: e.key,
            value,
            updated_at: rfc3339(e.updated_at),
        })
    }
}

fn key(k: &str) -> Result<StateKey> {
    StateKey::parse(k).map_err(|e| ServiceError::invalid(e.kind(), e))
}

impl App {
    pub fn list_state(&self, actor: &Actor, user: &str) -> Result<Vec<StateValue>> {
        let u = self.user_for(actor, user)?;
        self.store
            .list_state(u.id)?
            .into_iter()
            .map(StateValue::try_from)
            .collect()
    }

    pub fn get_state(&self, actor: &Actor, user: &str, k: &str) -> Result<StateValue> {
        let u = self.user_for(actor, user)?;
        let k = key(k)?;
        self.store
            .state(u.id, k.as_str())?
            .ok_or(ServiceError::NotFound { what: "state key" })?
            .try_into()
    }

    pub fn put_state(
        &self,
        actor: &Actor,
        user: &str,
        k: &str,
        value: serde_json::Value,
    ) -> Result<StateValue> {
        self.audited(actor, "state.put", &format!("{user}/{k}"), || {
            let u = self.user_for(actor, user)?;
            let k = key(k)?;
            let text = value.to_string();
            if text.len() > MAX_VALUE {
                return Err(ServiceError::invalid(
                    "value_too_large",
                    format!("a state value is at most {MAX_VALUE} bytes of JSON"),
                ));
            }
            let t = now();
            self.store.put_state(u.id, k.as_str(), &text, t)?;
            Ok(StateValue {
                key: k.to_string(),
                value,
                updated_at: rfc3339(t),
            })
        })
    }

    pub fn delete_state(&self, actor: &Actor, user: &str, k: &str) -> Result<()> {
        self.audited(actor, "state.delete", &format!("{user}/{k}"), || {
            let u = self.user_for(actor, user)?;
            let k = key(k)?;
            if self.store.delete_state(u.id, k.as_str())? {
                Ok(())
            } else {
                Err(ServiceError::NotFound { what: "state key" })
            }
        })
    }
}
