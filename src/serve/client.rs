//! A minimal blocking HTTP/1.1 client for the lookup API: one keep-alive connection, JSON bodies.
//!
//! The demo prints lookups through it, the tests drive the server with it (including requests a
//! well-behaved client library would refuse to send), and the serving benchmark uses it as its load generator:
//! it adds almost nothing on top of the socket, so latencies measure the server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::error::{Error, Result};

pub struct Client {
    addr: SocketAddr,
    token: Option<String>,
    conn: Option<BufReader<TcpStream>>,
}

/// Status and body of one response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::invalid(
                "lookup API response",
                format!("not JSON ({e}): {}", self.text()),
            )
        })
    }
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            token: None,
            conn: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    pub fn get(&mut self, path: &str) -> Result<Reply> {
        self.request("GET", path, &[], None)
    }

    pub fn post_json(&mut self, path: &str, body: &str) -> Result<Reply> {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
    }

    /// Any request; a connection the server closed is reopened once.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply> {
        match self.try_request(method, path, headers, body) {
            Ok(reply) => Ok(reply),
            Err(_) if self.conn.is_none() => self.try_request(method, path, headers, body),
            Err(e) => Err(e),
        }
    }

    fn connection(&mut self) -> Result<&mut BufReader<TcpStream>> {
        if self.conn.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                .map_err(|e| Error::io(format!("connecting to {}", self.addr), e))?;
            stream.set_nodelay(true).ok();
            stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
            self.conn = Some(BufReader::new(stream));
        }
        Ok(self.conn.as_mut().expect("just opened"))
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let addr = self.addr;
        let result = (|| -> std::io::Result<Reply> {
            let conn = self.connection().map_err(std::io::Error::other)?;
            let stream = conn.get_mut();
            let mut out = head.into_bytes();
            out.extend_from_slice(body);
            // A server may answer (413) and close before taking a large body: read its answer even then.
            let written = stream.write_all(&out);
            match read_reply(conn) {
                Ok(reply) => Ok(reply),
                Err(e) => Err(written.err().unwrap_or(e)),
            }
        })();
        match result {
            Ok(reply) => Ok(reply),
            Err(e) => {
                self.conn = None;
                Err(Error::io(format!("request to {addr}{path}"), e))
            }
        }
    }
}

fn read_reply(conn: &mut BufReader<TcpStream>) -> std::io::Result<Reply> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse().map_err(|_| bad("content-length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| bad("chunk size"))?;
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..size]);
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        conn.read_exact(&mut body)?;
    } else {
        conn.read_to_end(&mut body)?;
    }
    Ok(Reply { status, body })
}
