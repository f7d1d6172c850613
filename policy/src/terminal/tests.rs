use super::*;

#[test]
fn every_client_opcode_round_trips_with_its_documented_bytes() {
    let table: Vec<(ClientFrame, Vec<u8>)> = vec![
        (
            ClientFrame::Input(b"ls\r".to_vec()),
            vec![0x00, b'l', b's', b'\r'],
        ),
        (ClientFrame::Input(vec![]), vec![0x00]),
        (
            ClientFrame::Resize { cols: 80, rows: 24 },
            vec![0x01, 0x00, 0x50, 0x00, 0x18],
        ),
        (
            ClientFrame::Ack(0x1_0000),
            vec![0x02, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00],
        ),
        (ClientFrame::Ping(b"t1".to_vec()), vec![0x03, b't', b'1']),
        (ClientFrame::Resume(5), vec![0x04, 0, 0, 0, 0, 0, 0, 0, 5]),
        (ClientFrame::Close, vec![0x05]),
    ];
    for (frame, bytes) in table {
        assert_eq!(frame.encode(), bytes, "{frame:?}");
        assert_eq!(ClientFrame::decode(&bytes), Ok(frame));
    }
}

#[test]
fn every_server_opcode_round_trips_with_its_documented_bytes() {
    let hello = Hello {
        session: "ab12".into(),
        read_only: true,
        window: 256 * 1024,
        buffer: 1 << 20,
        max_frame: MAX_CLIENT_FRAME as u32,
        heartbeat_ms: 30_000,
        start: 0,
        end: 7,
    };
    let mut hello_bytes = vec![0x80, 1, 1];
    hello_bytes.extend_from_slice(&[0, 4, 0, 0]);
    hello_bytes.extend_from_slice(&[0, 0x10, 0, 0]);
    hello_bytes.extend_from_slice(&[0, 1, 0, 1]);
    hello_bytes.extend_from_slice(&[0, 0, 0x75, 0x30]);
    hello_bytes.extend_from_slice(&[0; 8]);
    hello_bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]);
    hello_bytes.extend_from_slice(b"ab12");
    let table: Vec<(ServerFrame, Vec<u8>)> = vec![
        (ServerFrame::Hello(hello), hello_bytes),
        (
            ServerFrame::Output {
                offset: 3,
                data: b"$ ".to_vec(),
            },
            vec![0x81, 0, 0, 0, 0, 0, 0, 0, 3, b'$', b' '],
        ),
        (ServerFrame::Pong(b"t1".to_vec()), vec![0x82, b't', b'1']),
        (ServerFrame::Exit(130), vec![0x83, 0, 0, 0, 130]),
        (ServerFrame::Exit(-1), vec![0x83, 0xff, 0xff, 0xff, 0xff]),
        (
            ServerFrame::Gap { from: 0, to: 9 },
            vec![0x84, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
        ),
        (
            ServerFrame::Error {
                kind: "read_only".into(),
                message: "no".into(),
            },
            [&[0x85][..], b"read_only", &[0], b"no"].concat(),
        ),
    ];
    for (frame, bytes) in table {
        assert_eq!(frame.encode(), bytes, "{frame:?}");
        assert_eq!(ServerFrame::decode(&bytes), Ok(frame));
    }
}

#[test]
fn malformed_client_frames_are_refused_with_a_named_error() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "malformed_frame"),
        (vec![0x01, 0, 80, 0], "malformed_frame"),
        (vec![0x01, 0, 80, 0, 24, 0], "malformed_frame"),
        (vec![0x02, 1, 2, 3], "malformed_frame"),
        (vec![0x04], "malformed_frame"),
        (vec![0x05, 0], "malformed_frame"),
        (vec![0x06], "unknown_opcode"),
        (vec![0x7f, 1], "unknown_opcode"),
        // Server opcodes are not accepted from clients.
        (vec![0x81, 0, 0, 0, 0, 0, 0, 0, 0], "unknown_opcode"),
        (vec![0xff], "unknown_opcode"),
        (
            [&[0x03][..], &[0u8; MAX_PING + 1]].concat(),
            "frame_too_large",
        ),
    ];
    for (bytes, kind) in cases {
        let err = ClientFrame::decode(&bytes).unwrap_err();
        assert_eq!(err.kind(), kind, "{bytes:?}: {err}");
    }
}

#[test]
fn oversize_input_is_refused_and_the_largest_allowed_is_accepted() {
    let max = [&[op::INPUT][..], &vec![b'x'; MAX_INPUT]].concat();
    assert!(matches!(ClientFrame::decode(&max), Ok(ClientFrame::Input(d)) if d.len() == MAX_INPUT));
    let over = [&[op::INPUT][..], &vec![b'x'; MAX_INPUT + 1]].concat();
    assert_eq!(
        ClientFrame::decode(&over).unwrap_err(),
        ProtocolError::TooLarge {
            len: MAX_CLIENT_FRAME + 1,
            max: MAX_CLIENT_FRAME
        }
    );
}

#[test]
fn resize_to_zero_or_huge_sizes_is_refused() {
    let resize = |c: u16, r: u16| ClientFrame::Resize { cols: c, rows: r }.encode();
    for (c, r) in [
        (0, 24),
        (80, 0),
        (0, 0),
        (MAX_COLS + 1, 24),
        (80, MAX_ROWS + 1),
        (u16::MAX, u16::MAX),
    ] {
        assert_eq!(
            ClientFrame::decode(&resize(c, r)),
            Err(ProtocolError::Size { cols: c, rows: r })
        );
    }
    for (c, r) in [(1, 1), (MAX_COLS, MAX_ROWS), (80, 24)] {
        assert_eq!(
            ClientFrame::decode(&resize(c, r)),
            Ok(ClientFrame::Resize { cols: c, rows: r })
        );
    }
}

#[test]
fn malformed_server_frames_are_refused() {
    for bytes in [
        vec![],
        vec![0x80, 1],
        vec![
            0x80, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0,
        ],
        vec![0x81, 0, 0],
        vec![0x83, 0],
        vec![0x84, 0, 0, 0, 0, 0, 0, 0, 1],
        vec![0x85, b'x'],
        vec![0x86],
        vec![0x00, b'a'],
    ] {
        assert!(ServerFrame::decode(&bytes).is_err(), "{bytes:?}");
    }
}

#[test]
fn the_ring_keeps_the_last_bytes_and_reports_what_is_gone() {
    let mut r = Ring::new(8);
    r.push(b"abcde");
    assert_eq!((r.start(), r.end()), (0, 5));
    let s = r.read(0, 100);
    assert_eq!((s.gap, s.offset, s.to_vec()), (None, 0, b"abcde".to_vec()));
    r.push(b"fghij");
    assert_eq!((r.start(), r.end(), r.len()), (2, 10, 8));
    let s = r.read(0, 100);
    assert_eq!(
        (s.gap, s.offset, s.to_vec()),
        (Some((0, 2)), 2, b"cdefghij".to_vec())
    );
    let s = r.read(4, 3);
    assert_eq!((s.gap, s.offset, s.to_vec()), (None, 4, b"efg".to_vec()));
    // Past the end: nothing, positioned at the end.
    let s = r.read(99, 3);
    assert_eq!((s.gap, s.offset, s.len()), (None, 10, 0));
    // One push larger than the ring keeps its tail.
    r.push(b"0123456789AB");
    assert_eq!((r.start(), r.end()), (14, 22));
    assert_eq!(r.read(14, 100).to_vec(), b"456789AB".to_vec());
}

#[test]
fn ring_reads_are_exact_across_the_wrap_for_every_offset() {
    // Reading everything in chunks from any offset yields the stream with nothing lost
    // or repeated, whatever the wrap position of the deque.
    let stream: Vec<u8> = (0..200u32).map(|i| (i % 251) as u8).collect();
    let mut r = Ring::new(64);
    let mut pushed = 0;
    for chunk in stream.chunks(7) {
        r.push(chunk);
        pushed += chunk.len();
        for from in r.start()..=r.end() {
            let mut at = from;
            let mut got = vec![];
            loop {
                let s = r.read(at, 5);
                assert_eq!(s.gap, None);
                if s.is_empty() {
                    break;
                }
                got.extend(s.to_vec());
                at = s.offset + s.len() as u64;
            }
            assert_eq!(got, &stream[from as usize..pushed]);
        }
    }
}
