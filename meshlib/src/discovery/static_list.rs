use futures_util::{StreamExt as _, stream};

use super::{Change, Changes, Endpoint, Resolver};

/// A fixed list of endpoints, the same for every service name it is asked about.
///
/// Used for `kind = "static"` in configuration; useful on its own in tests and small deployments.
#[derive(Clone, Debug, Default)]
pub struct StaticResolver {
    endpoints: Vec<Endpoint>,
}

impl StaticResolver {
    /// A resolver that always answers with `endpoints`.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<Endpoint>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
        }
    }
}

impl Resolver for StaticResolver {
    fn resolve(&self, _service: &str) -> Changes {
        let reset = Change::Reset(self.endpoints.clone());
        // Stays open after the one change: an ended stream would read as "discovery stopped".
        Box::pin(stream::iter([Ok(reset)]).chain(stream::pending()))
    }
}
