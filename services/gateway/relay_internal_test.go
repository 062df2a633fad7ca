package gateway

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
)

// positionByDecoding is what writePosition must agree with: the position proto.Unmarshal
// reads.
func positionByDecoding(wire []byte) (uint64, bool) {
	var m ledgerv1.TransferResponse
	if err := proto.Unmarshal(wire, &m); err != nil {
		return 0, false
	}
	return m.GetResult().GetPosition(), true
}

func varintField(num protowire.Number, v uint64) []byte {
	return protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), v)
}

func messageField(num protowire.Number, parts ...[]byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), bytes.Join(parts, nil))
}

func TestWritePositionReadsWhatDecodingReads(t *testing.T) {
	result, position, ok := resultField[ledgerv1.TransferResponse]()
	if !ok || result != 2 || position != 1 {
		t.Fatalf("resultField of TransferResponse = %d, %d, %v; want 2, 1, true", result, position, ok)
	}
	if _, _, ok := resultField[ledgerv1.GetBalanceResponse](); ok {
		t.Errorf("resultField says a read's answer (GetBalanceResponse) holds a WriteResult")
	}
	full, err := proto.Marshal(&ledgerv1.TransferResponse{
		Payment: &ledgerv1.Payment{PaymentId: "p-1"},
		Result:  &ledgerv1.WriteResult{Position: 1 << 40, Replayed: true, Balances: []*ledgerv1.Balance{{AccountId: "a"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"a whole answer":           full,
		"empty":                    nil,
		"no result":                messageField(1, varintField(3, 1)),
		"result twice, merged":     bytes.Join([][]byte{messageField(2, varintField(1, 5)), messageField(2, varintField(2, 1))}, nil),
		"result twice, last wins":  bytes.Join([][]byte{messageField(2, varintField(1, 5)), messageField(2, varintField(1, 9))}, nil),
		"position twice":           messageField(2, varintField(1, 5), varintField(1, 6)),
		"position of another type": messageField(2, protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "x")),
		"result of another type":   varintField(2, 7),
		"unknown fields around":    bytes.Join([][]byte{varintField(50, 1), messageField(2, varintField(60, 3), varintField(1, 8)), messageField(51)}, nil),
		"a group":                  bytes.Join([][]byte{protowire.AppendTag(nil, 40, protowire.StartGroupType), varintField(1, 3), protowire.AppendTag(nil, 40, protowire.EndGroupType), messageField(2, varintField(1, 4))}, nil),
	}
	for name, wire := range cases {
		want, wantOK := positionByDecoding(wire)
		got, gotOK := writePosition(wire, result, position)
		if !wantOK {
			t.Fatalf("%s: the case does not decode; fix the test", name)
		}
		if got != want || !gotOK {
			t.Errorf("%s: writePosition = %d, %v; decoding reads %d", name, got, gotOK, want)
		}
	}
	for name, wire := range map[string][]byte{
		"truncated":          full[:len(full)-1],
		"truncated in place": append(protowire.AppendTag(nil, 2, protowire.BytesType), 10, 8),
		"bad tag":            {0x00},
	} {
		if _, ok := writePosition(wire, result, position); ok {
			t.Errorf("%s: writePosition read bytes that are not protobuf", name)
		}
	}
}

// FuzzWritePosition: wherever proto.Unmarshal reads an answer, writePosition reads the
// same position from its bytes.
func FuzzWritePosition(f *testing.F) {
	result, position, _ := resultField[ledgerv1.TransferResponse]()
	f.Add([]byte(nil))
	f.Add(messageField(2, varintField(1, 5)))
	full, _ := proto.Marshal(&ledgerv1.TransferResponse{Result: &ledgerv1.WriteResult{Position: 77, Balances: []*ledgerv1.Balance{{AccountId: "a"}}}})
	f.Add(full)
	f.Fuzz(func(t *testing.T, wire []byte) {
		want, ok := positionByDecoding(wire)
		if !ok {
			return
		}
		if got, gotOK := writePosition(wire, result, position); got != want || !gotOK {
			t.Errorf("writePosition(%x) = %d, %v; decoding reads %d", wire, got, gotOK, want)
		}
	})
}

// TestCodecsKeepTheBytesTheyDecoded: the handlers' codec decodes a request and keeps the
// bytes it decoded (a copy: Connect recycles its buffer), which the clients' codec sends
// unchanged; a frame changed after decoding, or decoded from JSON, is encoded instead.
func TestCodecsKeepTheBytesTheyDecoded(t *testing.T) {
	in := bytes.Join([][]byte{
		protowire.AppendString(protowire.AppendTag(nil, 2, protowire.BytesType), "bob"),
		protowire.AppendString(protowire.AppendTag(nil, 2, protowire.BytesType), "alice"),
		varintField(90, 1),
	}, nil)
	buf := append([]byte(nil), in...)
	var req frame[ledgerv1.TransferRequest]
	if err := (wireCodec{decode: true}).Unmarshal(buf, &req); err != nil {
		t.Fatal(err)
	}
	clear(buf) // as Connect reuses its buffer
	if got := req.msg().GetSourceAccountId(); got != "alice" {
		t.Errorf("decoded source %q, want the last one, alice", got)
	}
	out, err := wireCodec{}.MarshalAppend([]byte("prefix"), &req)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, append([]byte("prefix"), in...)) {
		t.Errorf("sent %x, want prefix and the bytes received %x", out, in)
	}

	// An answer stays bytes until needed.
	var res frame[ledgerv1.TransferResponse]
	if err := (wireCodec{}).Unmarshal(messageField(1, protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "p-1")), &res); err != nil {
		t.Fatal(err)
	}
	if res.decoded != nil {
		t.Errorf("the clients' codec decoded an answer nobody asked to read")
	}
	json, err := jsonCodec{name: "json"}.Marshal(&res)
	if err != nil || !bytes.Contains(json, []byte(`"paymentId":"p-1"`)) {
		t.Errorf("the answer as JSON: %s, %v; want it decoded from its bytes", json, err)
	}
	m, _ := res.message()
	m.Payment.PaymentId = "p-2"
	res.setMessage(m)
	out, err = wireCodec{}.Marshal(&res)
	var back ledgerv1.TransferResponse
	if err != nil || proto.Unmarshal(out, &back) != nil || back.GetPayment().GetPaymentId() != "p-2" {
		t.Errorf("a changed answer was sent as %x (%v), want it encoded with p-2", out, err)
	}

	// JSON requests are decoded and have no bytes to forward.
	var jreq frame[ledgerv1.TransferRequest]
	if err := (jsonCodec{name: "json"}).Unmarshal([]byte(`{"sourceAccountId":"alice","unknownField":1}`), &jreq); err != nil {
		t.Fatal(err)
	}
	if _, ok := jreq.wireBytes(); ok || jreq.msg().GetSourceAccountId() != "alice" {
		t.Errorf("a JSON request: wire kept %v, source %q; want no bytes and alice", ok, jreq.msg().GetSourceAccountId())
	}
	if err := (jsonCodec{name: "json"}).Unmarshal(nil, &jreq); err == nil {
		t.Errorf("an empty JSON body was accepted")
	}
	if err := (wireCodec{decode: true}).Unmarshal([]byte{0x0a, 0x05}, &req); err == nil {
		t.Errorf("truncated protobuf was accepted")
	}
}
