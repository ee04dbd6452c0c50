//! Pieces the target-system fakes share (`targets_*.rs`): an answer with its status
//! kept, the log of what a fake received, and the requests a mock server saw on a path.

use std::time::Instant;

use serde_json::Value;
use wiremock::{MockServer, Request, ResponseTemplate};

/// One request a fake received, with its answer.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    pub at: Instant,
    pub body: Option<Value>,
}

/// An answer of a fake: its status kept for the log of requests.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Answer {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn template(&self) -> ResponseTemplate {
        let mut t = ResponseTemplate::new(self.status).set_body_json(&self.body);
        for (k, v) in &self.headers {
            t = t.insert_header(*k, v.as_str());
        }
        t
    }
}

/// The requests `server` received on `path`.
pub async fn requests(server: &MockServer, path: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == path)
        .collect()
}
