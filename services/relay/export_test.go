package relay

// CompileSchema is compileSchema for the tests outside the package, which check every
// message read back from the broker against the published schema.
var CompileSchema = compileSchema
