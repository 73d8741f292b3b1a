use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use super::{Change, Changes, Endpoint, ResolveError, Resolver};

/// A resolver for unit tests: the test adds and removes endpoints while requests run.
///
/// Only services announced with [`MockResolver::service`] may be resolved; a lookup of any other
/// name panics, so a test notices when the code under test asks for something unexpected.
#[derive(Clone, Debug, Default)]
pub struct MockResolver {
    services: Arc<Mutex<HashMap<String, MockHandle>>>,
}

/// Controls the endpoints of one service of a [`MockResolver`].
#[derive(Clone, Debug, Default)]
pub struct MockHandle {
    state: Arc<Mutex<MockState>>,
}

#[derive(Debug, Default)]
struct MockState {
    endpoints: Vec<Endpoint>,
    watchers: Vec<mpsc::UnboundedSender<Result<Change, ResolveError>>>,
}

impl MockResolver {
    /// A resolver that knows no services yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle of `service`, announcing it to the resolver on first use.
    pub fn service(&self, service: &str) -> MockHandle {
        let mut services = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        services.entry(service.to_owned()).or_default().clone()
    }
}

impl Resolver for MockResolver {
    fn resolve(&self, service: &str) -> Changes {
        let handle = {
            let services = self.services.lock().unwrap_or_else(PoisonError::into_inner);
            match services.get(service) {
                Some(handle) => handle.clone(),
                None => panic!("MockResolver: unexpected lookup of service {service:?}"),
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = handle.lock();
        // A late subscriber first learns the current set, as a fresh DNS answer would tell it.
        let _ = tx.send(Ok(Change::Reset(state.endpoints.clone())));
        state.watchers.push(tx);
        Box::pin(
            futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            })
            .fuse(),
        )
    }
}

impl MockHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, MockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(state: &mut MockState, item: Result<Change, ResolveError>) {
        state.watchers.retain(|tx| tx.send(item.clone()).is_ok());
    }

    /// Adds an endpoint (or replaces the one at the same address).
    pub fn add(&self, endpoint: impl Into<Endpoint>) {
        let endpoint = endpoint.into();
        let mut state = self.lock();
        state.endpoints.retain(|e| e.addr() != endpoint.addr());
        state.endpoints.push(endpoint.clone());
        Self::publish(&mut state, Ok(Change::Add(vec![endpoint])));
    }

    /// Removes the endpoint at `addr`.
    pub fn remove(&self, addr: SocketAddr) {
        let mut state = self.lock();
        state.endpoints.retain(|e| e.addr() != addr);
        Self::publish(&mut state, Ok(Change::Remove(vec![addr])));
    }

    /// Replaces the whole endpoint set.
    pub fn reset(&self, endpoints: impl IntoIterator<Item = impl Into<Endpoint>>) {
        let mut state = self.lock();
        state.endpoints = endpoints.into_iter().map(Into::into).collect();
        let change = Change::Reset(state.endpoints.clone());
        Self::publish(&mut state, Ok(change));
    }

    /// Reports a failed refresh: the last good set must stay in use.
    pub fn fail(&self, message: &str) {
        let mut state = self.lock();
        Self::publish(&mut state, Err(ResolveError::new(message)));
    }

    /// The endpoint set as the test last left it.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.lock().endpoints.clone()
    }
}
