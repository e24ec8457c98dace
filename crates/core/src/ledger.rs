//! The durability ledger: answers a connection owes its publisher, kept in publish order, each
//! going out only once what it covers is safe. It is the one place of the rule "answer after
//! the fsync that covers it", shared by AMQP's publisher confirms, MQTT's PUBACK/PUBREC and
//! STOMP's receipts.
//!
//! Each owed answer gets the next sequence number (1, 2, ...). It is owed either at once (the
//! message needed no write, or the answer covers no message) or waiting for the message
//! store's completion ([`Durability`]). A positive answer is released only when every answer
//! before it has been released: one waiting for the disk holds back those behind it. A failure
//! (the write failed, or the publication was refused) is released at once, ahead of any answer
//! still held, and is never covered by a later positive answer.
//!
//! The ledger does no I/O and knows no protocol: the adapter owes answers, tells it what the
//! store reported ([`Ledger::settle`], fed by completions the adapter sends back to its
//! connection), and encodes what it releases. [`Ledger::next_answer`] releases answers one by one (a
//! PUBACK, a RECEIPT); [`Ledger::next_confirm`] folds a run of them into one range (a
//! `basic.ack` with `multiple`), so a batch of publishes costs one answer frame.

use std::collections::VecDeque;

use crate::persistence::Durability;

/// An answer's place in its ledger: 1 for the first, counting up.
pub type Seq = u64;

/// Where an owed answer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the message store (or for the publish to say it needs no write).
    Waiting,
    /// May go once every answer before it has gone.
    Ready,
    /// Failed: released at once as a failure.
    Failed,
    /// A failure already released: only its place is kept, so the answers after it know it
    /// is answered.
    Answered,
}

#[derive(Debug)]
struct Owed<A> {
    answer: Option<A>,
    state: State,
}

/// An answer released by [`Ledger::next_answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<A> {
    /// Positive: what it covers is safe, and so is everything owed before it.
    Ready(Seq, A),
    /// Negative: what it covers failed to reach the disk, or was refused.
    Failed(Seq, A),
}

/// A range of answers released by [`Ledger::next_confirm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// Every answer after the previous one released through `upto` is positive; `multiple`
    /// when that is more than one.
    Ack {
        /// The last sequence number covered.
        upto: Seq,
        /// Whether it covers more than `upto` alone.
        multiple: bool,
        /// How many answers it covers.
        covered: u64,
    },
    /// Answer `Seq` is negative.
    Nack(Seq),
}

/// Answers owed to a publisher, in publish order, released as what they cover reaches the disk.
#[derive(Debug)]
pub struct Ledger<A> {
    /// Answers owed and not released, in order; `owed[i]` has sequence number `first + i`.
    owed: VecDeque<Owed<A>>,
    /// The sequence number of `owed[0]` (of the next answer owed when `owed` is empty).
    first: Seq,
    /// Failures not released yet, in the order they failed.
    failed: VecDeque<Seq>,
}

impl<A> Default for Ledger<A> {
    fn default() -> Self {
        Self {
            owed: VecDeque::new(),
            first: 1,
            failed: VecDeque::new(),
        }
    }
}

impl<A> Ledger<A> {
    /// An empty ledger; its first answer will be number 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Owes `answer`, waiting: it goes once [`Ledger::ready`] or [`Ledger::settle`] says so.
    /// Returns its sequence number (for the store's completion to name).
    pub fn owe(&mut self, answer: A) -> Seq {
        self.push(answer, State::Waiting)
    }

    /// Owes `answer`, which may go as soon as every answer before it has gone.
    pub fn owe_now(&mut self, answer: A) -> Seq {
        self.push(answer, State::Ready)
    }

    fn push(&mut self, answer: A, state: State) -> Seq {
        let seq = self.first + self.owed.len() as Seq;
        self.owed.push_back(Owed {
            answer: Some(answer),
            state,
        });
        seq
    }

    fn entry(&mut self, seq: Seq) -> Option<&mut Owed<A>> {
        let index = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.owed.get_mut(index)
    }

    /// Answer `seq` waits for nothing more: its message needed no write.
    pub fn ready(&mut self, seq: Seq) {
        if let Some(owed) = self.entry(seq)
            && owed.state == State::Waiting
        {
            owed.state = State::Ready;
        }
    }

    /// The message store reports on answer `seq`'s message. A report on an answer released
    /// already, or failed already (a full queue refused the message before its write was
    /// reported), changes nothing: nothing is answered twice.
    pub fn settle(&mut self, seq: Seq, durability: Durability) {
        match durability {
            Durability::OnDisk => self.ready(seq),
            Durability::Failed => {
                if let Some(owed) = self.entry(seq)
                    && owed.state == State::Waiting
                {
                    owed.state = State::Failed;
                    self.failed.push_back(seq);
                }
            }
        }
    }

    /// Answer `seq` is negative whatever the store says (its publication was refused).
    pub fn fail(&mut self, seq: Seq) {
        if let Some(owed) = self.entry(seq)
            && matches!(owed.state, State::Waiting | State::Ready)
        {
            owed.state = State::Failed;
            self.failed.push_back(seq);
        }
    }

    /// Drops the released places at the front: answered failures no answer waits behind.
    fn step_over_answered(&mut self) {
        while self
            .owed
            .front()
            .is_some_and(|owed| owed.state == State::Answered)
        {
            self.owed.pop_front();
            self.first += 1;
        }
    }

    /// The next failure to release, marked answered.
    fn next_failure(&mut self) -> Option<(Seq, A)> {
        while let Some(seq) = self.failed.pop_front() {
            if let Some(owed) = self.entry(seq)
                && owed.state == State::Failed
            {
                owed.state = State::Answered;
                if let Some(answer) = owed.answer.take() {
                    return Some((seq, answer));
                }
            }
        }
        None
    }

    /// The next answer that may go now, if any: positive answers in order, then failures.
    /// Call until None.
    pub fn next_answer(&mut self) -> Option<Answer<A>> {
        self.step_over_answered();
        if self
            .owed
            .front()
            .is_some_and(|owed| owed.state == State::Ready)
            && let Some(owed) = self.owed.pop_front()
        {
            let seq = self.first;
            self.first += 1;
            if let Some(answer) = owed.answer {
                return Some(Answer::Ready(seq, answer));
            }
        }
        let (seq, answer) = self.next_failure()?;
        Some(Answer::Failed(seq, answer))
    }

    /// The next range of answers that may go now, if any: every positive answer in a row as one
    /// [`Confirm::Ack`] (a failure released earlier splits a run in two, so no ack covers
    /// it), then each failure as a [`Confirm::Nack`]. Call until None.
    pub fn next_confirm(&mut self) -> Option<Confirm> {
        self.step_over_answered();
        let mut covered = 0;
        while self
            .owed
            .front()
            .is_some_and(|owed| owed.state == State::Ready)
        {
            self.owed.pop_front();
            self.first += 1;
            covered += 1;
        }
        if covered > 0 {
            return Some(Confirm::Ack {
                upto: self.first - 1,
                multiple: covered > 1,
                covered,
            });
        }
        let (seq, _) = self.next_failure()?;
        Some(Confirm::Nack(seq))
    }

    /// Whether nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.owed.iter().all(|owed| owed.state == State::Answered)
    }

    /// The answers not released yet, in order.
    pub fn owed(&self) -> impl Iterator<Item = &A> {
        self.owed.iter().filter_map(|owed| owed.answer.as_ref())
    }

    /// The answers still waiting for the message store, in order.
    pub fn waiting(&self) -> impl Iterator<Item = &A> {
        self.owed
            .iter()
            .filter(|owed| owed.state == State::Waiting)
            .filter_map(|owed| owed.answer.as_ref())
    }

    /// Gives up every answer owed, in order (the connection closes without them).
    pub fn abandon(&mut self) -> impl Iterator<Item = A> + '_ {
        self.first += self.owed.len() as Seq;
        self.failed.clear();
        self.owed.drain(..).filter_map(|owed| owed.answer)
    }
}

#[cfg(test)]
mod tests;
