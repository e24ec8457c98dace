//! The binary's contract (DESIGN.md section 6): listener lines, `ready`, port 0, `off`, and a
//! clean exit on SIGTERM and SIGINT.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use junction_tests::Broker;

#[test]
fn port_zero_binds_a_free_port_and_prints_it() {
    let broker = Broker::start();
    let addr = broker.amqp_addr();
    assert_ne!(addr.port(), 0);
    assert!(TcpStream::connect(addr).is_ok());
    assert_eq!(
        broker.listeners.len(),
        1,
        "only amqp is on: {:?}",
        broker.listeners
    );
    assert!(broker.stop(), "clean exit on SIGTERM");
}

#[test]
fn sigint_stops_the_broker_cleanly() {
    let mut broker = Broker::start();
    broker.signal("INT");
    assert_eq!(broker.wait_exit(Duration::from_secs(15)), Some(true));
}

#[test]
fn garbage_instead_of_a_protocol_header_gets_our_header_back() {
    let broker = Broker::start();
    let mut stream = TcpStream::connect(broker.amqp_addr()).expect("connect");
    std::io::Write::write_all(&mut stream, b"GET / HTTP/1.1\r\n\r\n").expect("write");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert_eq!(reply, b"AMQP\x00\x00\x09\x01");
}
