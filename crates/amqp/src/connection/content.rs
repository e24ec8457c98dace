//! Content assembly: a basic.publish is followed by a content header and body frames; once the
//! declared body size has arrived the message is published.

use super::*;

impl Connection {
    pub(super) async fn on_content_header(&mut self, frame: RawFrame) -> AmqpResult<()> {
        let number = frame.channel;
        let Some(mut channel) = self.take_channel(number) else {
            return Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {number}"),
            ));
        };
        let awaiting_header = channel
            .pending
            .as_ref()
            .is_some_and(|p| p.properties.is_none());
        if channel.state == ChannelState::Closing {
            self.put_channel(number, channel);
            return Ok(());
        }
        if !awaiting_header {
            self.put_channel(number, channel);
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("unexpected content header frame on channel {number}"),
            ));
        }
        // The headers table is parsed recursively by amq-protocol: bound its depth first.
        match nesting::check_content_header(&frame.payload[..], MAX_DEPTH) {
            Ok(()) => {}
            Err(NestingError::Malformed) => {
                self.put_channel(number, channel);
                return Err(AmqpError::connection(
                    code::FRAME_ERROR,
                    "malformed content header",
                ));
            }
            Err(too_deep @ NestingError::TooDeep { .. }) => {
                self.put_channel(number, channel);
                return Err(AmqpError::connection(
                    code::SYNTAX_ERROR,
                    format!("message headers: {too_deep}"),
                )
                .during((60, 40)));
            }
        }
        let header = match parse_content_header(&frame.payload[..]) {
            Ok((_, header)) => header,
            Err(_) => {
                self.put_channel(number, channel);
                return Err(AmqpError::connection(
                    code::FRAME_ERROR,
                    "malformed content header",
                ));
            }
        };
        if header.class_id != 60 {
            self.put_channel(number, channel);
            return Err(AmqpError::connection(
                code::FRAME_ERROR,
                format!("content header for class {} is not basic", header.class_id),
            ));
        }
        let max = self.session.settings.max_message_size;
        if header.body_size > max {
            let error = AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!(
                    "message size {} is larger than configured max size {max}",
                    header.body_size
                ),
            )
            .during((60, 40));
            self.close_channel_with(&mut channel, error).await;
            self.put_channel(number, channel);
            return Ok(());
        }
        if let Some(pending) = channel.pending.as_mut() {
            pending.properties = Some(properties_from_wire(&header.properties));
            pending.body_size = header.body_size;
        }
        if header.body_size == 0 {
            self.complete_publish(&mut channel).await;
        }
        self.put_channel(number, channel);
        Ok(())
    }

    pub(super) async fn on_content_body(&mut self, frame: RawFrame) -> AmqpResult<()> {
        let number = frame.channel;
        let Some(mut channel) = self.take_channel(number) else {
            return Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {number}"),
            ));
        };
        if channel.state == ChannelState::Closing {
            self.put_channel(number, channel);
            return Ok(());
        }
        let Some(pending) = channel.pending.as_mut().filter(|p| p.properties.is_some()) else {
            self.put_channel(number, channel);
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("unexpected content body frame on channel {number}"),
            ));
        };
        pending.body.push(frame.payload);
        let received = pending.body.len() as u64;
        let expected = pending.body_size;
        if received > expected {
            self.put_channel(number, channel);
            return Err(AmqpError::connection(
                code::FRAME_ERROR,
                format!("content body of {received} bytes exceeds the declared {expected}"),
            ));
        }
        if received == expected {
            self.complete_publish(&mut channel).await;
        }
        self.put_channel(number, channel);
        Ok(())
    }

    pub(super) async fn complete_publish(&mut self, channel: &mut Channel) {
        let Some(pending) = channel.pending.take() else {
            return;
        };
        let ids = (60, 40);
        if let Err(error) = basic::publish(&mut self.session, channel, pending).await {
            match error.scope {
                Scope::Channel => self.close_channel_with(channel, error.during(ids)).await,
                Scope::Connection => self.fail(error.during(ids)).await,
            }
        }
    }
}
