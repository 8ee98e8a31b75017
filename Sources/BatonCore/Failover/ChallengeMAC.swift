/// The monitor's challenge (DESIGN.md §2 "Monitor"): the monitor sends a fresh
/// random key, the server answers HMAC(secret, key ‖ epoch ‖ journal position)
/// through its request path. Only a process holding the export's secret can
/// answer, the epoch in the MAC lets a fenced server of an older epoch be told
/// apart, and reading the journal position makes the answer pass the same
/// lock a client mutation takes, so a wedged worker fails the challenge.
public enum ChallengeMAC {
    /// Length of the monitor's random key: 128 bits make a replayed answer to a guessed key hopeless.
    public static let keyBytes = 16
    /// Bytes of a response: a full HMAC-SHA-256, not truncated.
    public static let responseBytes = MessageAuthenticator.codeBytes

    /// The response a live server of `epoch` at `journalSequence` gives to `key`.
    /// Epoch and sequence are little-endian, as every other Baton field.
    public static func response(_ authenticator: MessageAuthenticator, key: [UInt8], epoch: UInt64,
                                journalSequence: UInt64) -> [UInt8] {
        precondition(key.count == keyBytes, "probe key of \(key.count) bytes, expected \(keyBytes)")
        var message = ByteWriter(capacity: keyBytes + 16)
        message.write(raw: key)
        message.write(epoch)
        message.write(journalSequence)
        return authenticator.code(message.bytes)
    }
}
