package domain

// EncodeEventReflect exposes the encoding/json path of EncodeEvent to the external tests,
// which compare the hand-made appenders against it.
func EncodeEventReflect(e Event) (string, []byte, error) { return encodeEventReflect(e) }
