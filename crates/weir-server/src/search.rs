//! Scatter/gather over this node's shard indexes. Index work runs on the blocking pool:
//! a search never blocks the async runtime.

use std::sync::Arc;

use weir_index::{Cursor, Hit, SearchRequest, ShardIndex};
use weir_proto::{ApiError, ErrorKind};

/// One page of merged results.
pub struct Page {
    /// Hits in the requested order.
    pub hits: Vec<Hit>,
    /// Every match in range, over all shards.
    pub total: u64,
    /// Cursor for the next page.
    pub next: Option<Cursor>,
}

/// Searches every shard of this node and merges.
pub struct Searcher {
    indexes: Vec<Arc<ShardIndex>>,
}

fn index_error(e: weir_index::Error) -> ApiError {
    if e.is_client_error() {
        ApiError::invalid(e.to_string())
    } else {
        ApiError::new(ErrorKind::Internal, format!("search failed: {e}"))
    }
}

fn join_error(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(ErrorKind::Internal, format!("search task failed: {e}"))
}

impl Searcher {
    /// A searcher over `indexes` (one per shard).
    pub fn new(indexes: Vec<Arc<ShardIndex>>) -> Self {
        Searcher { indexes }
    }

    /// Runs `req` on every shard and merges into one page.
    ///
    /// # Errors
    /// InvalidArgument for a bad query or cursor; Internal when an index fails.
    pub async fn search(&self, req: SearchRequest) -> Result<Page, ApiError> {
        let req = Arc::new(req);
        let mut tasks = Vec::with_capacity(self.indexes.len());
        for ix in &self.indexes {
            let (ix, req) = (ix.clone(), req.clone());
            tasks.push(tokio::task::spawn_blocking(move || ix.search(&req)));
        }
        let mut results = Vec::with_capacity(tasks.len());
        for t in tasks {
            results.push(t.await.map_err(join_error)?.map_err(index_error)?);
        }
        let (hits, total, next) =
            weir_index::merge(results, req.sort, req.limit, req.after.as_ref());
        Ok(Page { hits, total, next })
    }

    /// Label names used by `tenant` in the range, over all shards.
    ///
    /// # Errors
    /// Internal when an index fails.
    pub async fn label_names(
        &self,
        tenant: String,
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, ApiError> {
        self.union(move |ix| ix.label_names(&tenant, start, end))
            .await
    }

    /// Values of label `name` used by `tenant` in the range, over all shards.
    ///
    /// # Errors
    /// Internal when an index fails.
    pub async fn label_values(
        &self,
        tenant: String,
        name: String,
        start: i64,
        end: i64,
    ) -> Result<Vec<String>, ApiError> {
        self.union(move |ix| ix.label_values(&tenant, &name, start, end))
            .await
    }

    /// The sorted, deduplicated union of `f` over every shard, on the blocking pool.
    async fn union<F>(&self, f: F) -> Result<Vec<String>, ApiError>
    where
        F: Fn(&ShardIndex) -> weir_index::Result<Vec<String>> + Send + 'static,
    {
        let indexes = self.indexes.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = std::collections::BTreeSet::new();
            for ix in &indexes {
                all.extend(f(ix)?);
            }
            Ok(all.into_iter().collect())
        })
        .await
        .map_err(join_error)?
        .map_err(index_error)
    }
}
