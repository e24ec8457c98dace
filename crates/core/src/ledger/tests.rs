use super::*;

fn answers<A>(ledger: &mut Ledger<A>) -> Vec<Answer<A>> {
    std::iter::from_fn(|| ledger.next_answer()).collect()
}

fn confirms<A>(ledger: &mut Ledger<A>) -> Vec<Confirm> {
    std::iter::from_fn(|| ledger.next_confirm()).collect()
}

fn ack(upto: Seq, multiple: bool) -> Confirm {
    Confirm::Ack { upto, multiple }
}

#[test]
fn answers_leave_in_publish_order_once_what_they_cover_is_on_disk() {
    let mut ledger = Ledger::new();
    let stored = ledger.owe("puback 1");
    let transient = ledger.owe("puback 2");
    ledger.ready(transient);
    assert_eq!(
        answers(&mut ledger),
        [],
        "the second waits behind the first"
    );
    ledger.settle(stored, Durability::OnDisk);
    assert_eq!(
        answers(&mut ledger),
        [Answer::Ready(1, "puback 1"), Answer::Ready(2, "puback 2")]
    );
    assert!(ledger.is_empty());
}

#[test]
fn an_answer_owed_now_goes_at_once_when_nothing_waits_before_it() {
    let mut ledger = Ledger::new();
    ledger.owe_now("receipt");
    assert_eq!(answers(&mut ledger), [Answer::Ready(1, "receipt")]);
    let waiting = ledger.owe("send");
    ledger.owe_now("receipt after the send");
    assert_eq!(answers(&mut ledger), []);
    assert_eq!(
        ledger.owed().copied().collect::<Vec<_>>(),
        ["send", "receipt after the send"]
    );
    assert_eq!(ledger.waiting().copied().collect::<Vec<_>>(), ["send"]);
    ledger.settle(waiting, Durability::OnDisk);
    assert_eq!(
        answers(&mut ledger),
        [
            Answer::Ready(2, "send"),
            Answer::Ready(3, "receipt after the send")
        ]
    );
}

#[test]
fn confirms_go_as_one_multiple_ack_up_to_the_first_answer_still_waiting() {
    let mut ledger = Ledger::<()>::new();
    for _ in 0..3 {
        let seq = ledger.owe(());
        ledger.ready(seq);
    }
    let stored = ledger.owe(());
    for _ in 0..2 {
        let seq = ledger.owe(());
        ledger.ready(seq);
    }
    assert_eq!(confirms(&mut ledger), [ack(3, true)]);
    ledger.settle(stored, Durability::OnDisk);
    assert_eq!(confirms(&mut ledger), [ack(6, true)]);
    let single = ledger.owe_now(());
    assert_eq!(confirms(&mut ledger), [ack(single, false)]);
}

#[test]
fn a_failed_write_is_answered_at_once_and_no_ack_covers_it() {
    let mut ledger = Ledger::<()>::new();
    let first = ledger.owe(());
    let failing = ledger.owe(());
    let after = ledger.owe_now(());
    ledger.settle(failing, Durability::Failed);
    assert_eq!(
        confirms(&mut ledger),
        [Confirm::Nack(failing)],
        "a failure needs no disk: it goes ahead of the answer still waiting"
    );
    ledger.settle(first, Durability::OnDisk);
    assert_eq!(
        confirms(&mut ledger),
        [ack(first, false), ack(after, false)]
    );
    assert!(ledger.is_empty());
}

#[test]
fn acks_around_a_refused_publication_split_in_two() {
    let mut ledger = Ledger::<()>::new();
    for _ in 0..5 {
        ledger.owe_now(());
    }
    ledger.fail(3);
    assert_eq!(
        confirms(&mut ledger),
        [ack(2, true), Confirm::Nack(3), ack(5, true)]
    );
}

#[test]
fn nothing_is_answered_twice() {
    let mut ledger = Ledger::<()>::new();
    let refused = ledger.owe(());
    ledger.fail(refused);
    // The store reports on the refused message later (it was written for another queue).
    ledger.settle(refused, Durability::Failed);
    ledger.settle(refused, Durability::OnDisk);
    assert_eq!(confirms(&mut ledger), [Confirm::Nack(refused)]);
    let next = ledger.owe_now(());
    // A report on an answer released already, or never owed, changes nothing.
    ledger.settle(refused, Durability::Failed);
    ledger.settle(next, Durability::Failed);
    ledger.settle(99, Durability::Failed);
    assert_eq!(confirms(&mut ledger), [ack(next, false)]);
    assert_eq!(confirms(&mut ledger), []);
}

#[test]
fn a_failure_behind_an_answer_still_waiting_is_stepped_over_later() {
    let mut ledger = Ledger::<()>::new();
    ledger.owe_now(());
    let waiting = ledger.owe(());
    let refused = ledger.owe_now(());
    ledger.owe_now(());
    ledger.fail(refused);
    assert_eq!(
        confirms(&mut ledger),
        [ack(1, false), Confirm::Nack(refused)]
    );
    ledger.settle(waiting, Durability::OnDisk);
    assert_eq!(confirms(&mut ledger), [ack(2, false), ack(4, false)]);
}

#[test]
fn answers_given_up_are_handed_back_in_order() {
    let mut ledger = Ledger::new();
    ledger.owe("a");
    ledger.owe_now("b");
    assert_eq!(ledger.abandon().collect::<Vec<_>>(), ["a", "b"]);
    assert!(ledger.is_empty());
    let next = ledger.owe_now("c");
    assert_eq!(next, 3, "numbers keep counting");
    assert_eq!(answers(&mut ledger), [Answer::Ready(3, "c")]);
}
