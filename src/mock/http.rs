//! Just enough HTTP/1.1 for the mock server: keep-alive requests with a
//! content-length body, chunked or content-length responses, and detection of a
//! client that hangs up mid-response.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::response::{MockResponse, Part};
use super::{RecordedRequest, Shared};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

async fn read_request(rd: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Option<RecordedRequest> {
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = find_head_end(buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = rd.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if len > MAX_BODY {
        return None;
    }
    while buf.len() < head_end + len {
        let n = rd.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Some(RecordedRequest {
        method,
        target,
        headers,
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn write_response(wr: &mut OwnedWriteHalf, resp: &MockResponse) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (n, v) in &resp.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if resp.chunked {
        head.push_str("transfer-encoding: chunked\r\n\r\n");
    } else {
        let len: usize = resp
            .parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => b.len(),
                Part::Delay(_) | Part::Gate(_) => 0,
            })
            .sum();
        head.push_str(&format!("content-length: {len}\r\n\r\n"));
    }
    wr.write_all(head.as_bytes()).await?;
    wr.flush().await?;
    for part in &resp.parts {
        match part {
            Part::Delay(d) => tokio::time::sleep(*d).await,
            Part::Gate(gate) => {
                let _ = gate.clone().wait_for(|open| *open).await;
            }
            Part::Bytes(bytes) => {
                let size = resp.write_size.unwrap_or(bytes.len().max(1));
                for piece in bytes.chunks(size) {
                    if resp.chunked {
                        let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                        framed.extend_from_slice(piece);
                        framed.extend_from_slice(b"\r\n");
                        wr.write_all(&framed).await?;
                    } else {
                        wr.write_all(piece).await?;
                    }
                    wr.flush().await?;
                }
            }
        }
    }
    if resp.stall_at_end {
        match resp.stall_keep_alive {
            Some(every) => loop {
                tokio::time::sleep(every).await;
                let comment: &[u8] = b": keep-alive\n\n";
                if resp.chunked {
                    let mut framed = format!("{:x}\r\n", comment.len()).into_bytes();
                    framed.extend_from_slice(comment);
                    framed.extend_from_slice(b"\r\n");
                    wr.write_all(&framed).await?;
                } else {
                    wr.write_all(comment).await?;
                }
                wr.flush().await?;
            },
            None => std::future::pending::<()>().await,
        }
    }
    if resp.hang_up {
        return Ok(());
    }
    if resp.chunked {
        wr.write_all(b"0\r\n\r\n").await?;
        wr.flush().await?;
    }
    Ok(())
}

pub(crate) async fn serve_connection(socket: TcpStream, shared: Arc<Shared>) {
    let (mut rd, mut wr) = socket.into_split();
    let mut buf = Vec::with_capacity(4096);
    while let Some(request) = read_request(&mut rd, &mut buf).await {
        let response = shared.on_request(request);
        let mut probe = [0u8; 4096];
        let write = write_response(&mut wr, &response);
        tokio::pin!(write);
        let finished = loop {
            tokio::select! {
                result = &mut write => break result.is_ok(),
                read = rd.read(&mut probe) => match read {
                    Ok(0) | Err(_) => break false,
                    Ok(n) => buf.extend_from_slice(&probe[..n]),
                },
            }
        };
        if !finished {
            shared.on_client_disconnect();
            return;
        }
        if response.hang_up {
            return; // dropping the socket closes the connection mid-body
        }
    }
}
