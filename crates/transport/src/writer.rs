//! The writing half of a connection: a task that takes encoded output from the connection's
//! reader loop and writes it, everything waiting at once, so a burst of deliveries costs one
//! write system call instead of one per chunk.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Writes what arrives on `output` until the channel closes (then shuts the writer down) or a
/// write fails. Chunks that are waiting together are joined and written with one call.
pub async fn write_batches<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut output: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut joined = BytesMut::new();
    while let Some(first) = output.recv().await {
        let written = match output.try_recv() {
            Err(_) => writer.write_all(&first).await,
            Ok(second) => {
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&second);
                while let Ok(more) = output.try_recv() {
                    joined.extend_from_slice(&more);
                }
                let result = writer.write_all(&joined).await;
                joined.clear();
                result
            }
        };
        if written.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}
