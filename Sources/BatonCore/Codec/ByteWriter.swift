/// Appends little-endian fields to a byte array. The one encoder every wire
/// message, journal record and checkpoint goes through.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func write(_ value: UInt8) { bytes.append(value) }
    public mutating func write(_ value: Bool) { bytes.append(value ? 1 : 0) }
    public mutating func write(_ value: UInt16) { writeInteger(value) }
    public mutating func write(_ value: UInt32) { writeInteger(value) }
    public mutating func write(_ value: UInt64) { writeInteger(value) }
    public mutating func write(_ value: Int64) { writeInteger(value) }
    public mutating func write(_ value: Int32) { writeInteger(value) }

    private mutating func writeInteger<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    /// A length-prefixed (u32) byte string.
    public mutating func write(bytes value: some Collection<UInt8>) {
        write(UInt32(value.count))
        bytes.append(contentsOf: value)
    }

    public mutating func write(raw value: some Sequence<UInt8>) { bytes.append(contentsOf: value) }

    public mutating func write(_ value: String) { write(bytes: Array(value.utf8)) }

    /// Overwrites a u32 written earlier (used for length prefixes).
    public mutating func patch(_ value: UInt32, at offset: Int) {
        withUnsafeBytes(of: value.littleEndian) { raw in
            for i in 0..<4 { bytes[offset + i] = raw[i] }
        }
    }
}

extension ByteWriter {
    /// One frame: a u32 length, then what `body` writes.
    public static func frame(capacity: Int, _ body: (inout ByteWriter) -> Void) -> [UInt8] {
        var w = ByteWriter(capacity: capacity + 4)
        w.write(UInt32(0))
        body(&w)
        w.patch(UInt32(w.bytes.count - 4), at: 0)
        return w.bytes
    }
}

/// Why a byte string could not be decoded. Input from the network or disk is
/// never trusted: every read is bounds-checked and fails with this instead of trapping.
public enum DecodeError: Error, Equatable, Sendable, CustomStringConvertible {
    case truncated(needed: Int, available: Int)
    case unknownTag(kind: String, tag: UInt32)
    case tooLarge(kind: String, size: Int, limit: Int)
    case invalid(String)

    public var description: String {
        switch self {
        case .truncated(let needed, let available): "truncated: needed \(needed) bytes, \(available) left"
        case .unknownTag(let kind, let tag): "unknown \(kind) tag \(tag)"
        case .tooLarge(let kind, let size, let limit): "\(kind) of \(size) bytes exceeds the limit of \(limit)"
        case .invalid(let why): why
        }
    }
}

/// Reads little-endian fields from a byte buffer, bounds-checked.
public struct ByteReader {
    public let bytes: UnsafeRawBufferPointer
    public private(set) var offset: Int = 0

    public init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    public var remaining: Int { bytes.count - offset }

    private mutating func need(_ count: Int) throws(DecodeError) {
        guard count >= 0, remaining >= count else { throw .truncated(needed: count, available: remaining) }
    }

    private mutating func readInteger<T: FixedWidthInteger>(_: T.Type) throws(DecodeError) -> T {
        try need(MemoryLayout<T>.size)
        var value: T = 0
        withUnsafeMutableBytes(of: &value) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + MemoryLayout<T>.size]))
        }
        offset += MemoryLayout<T>.size
        return T(littleEndian: value)
    }

    public mutating func readUInt8() throws(DecodeError) -> UInt8 { try readInteger(UInt8.self) }
    public mutating func readBool() throws(DecodeError) -> Bool { try readInteger(UInt8.self) != 0 }
    /// A one-byte tag of `T`; an unknown one fails naming `kind`.
    public mutating func readTag<T: RawRepresentable>(_: T.Type, kind: String) throws(DecodeError) -> T where T.RawValue == UInt8 {
        let raw = try readUInt8()
        guard let tag = T(rawValue: raw) else { throw .unknownTag(kind: kind, tag: UInt32(raw)) }
        return tag
    }
    public mutating func readUInt16() throws(DecodeError) -> UInt16 { try readInteger(UInt16.self) }
    public mutating func readUInt32() throws(DecodeError) -> UInt32 { try readInteger(UInt32.self) }
    public mutating func readUInt64() throws(DecodeError) -> UInt64 { try readInteger(UInt64.self) }
    public mutating func readInt64() throws(DecodeError) -> Int64 { try readInteger(Int64.self) }
    public mutating func readInt32() throws(DecodeError) -> Int32 { try readInteger(Int32.self) }

    /// A length-prefixed byte string of at most `limit` bytes.
    public mutating func readBytes(limit: Int, kind: String = "byte string") throws(DecodeError) -> [UInt8] {
        let count = Int(try readUInt32())
        guard count <= limit else { throw .tooLarge(kind: kind, size: count, limit: limit) }
        return try readRaw(count: count)
    }

    /// A length-prefixed byte string that must be exactly `count` long (a
    /// key or a MAC): any other length is refused here, at decoding, so no
    /// code past the decoder sees a length it cannot use.
    public mutating func readBytes(exactly count: Int, kind: String) throws(DecodeError) -> [UInt8] {
        let length = Int(try readUInt32())
        guard length == count else { throw .invalid("\(kind) of \(length) bytes, expected \(count)") }
        return try readRaw(count: count)
    }

    public mutating func readRaw(count: Int) throws(DecodeError) -> [UInt8] {
        try need(count)
        let result = Array(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count]))
        offset += count
        return result
    }

    public mutating func readString(limit: Int, kind: String = "string") throws(DecodeError) -> String {
        let raw = try readBytes(limit: limit, kind: kind)
        // Refused, not repaired: a name with its bad bytes replaced would be
        // another name than the one sent (the fuzzer's round trip found it).
        guard let text = String(validating: raw, as: UTF8.self) else { throw .invalid("\(kind) is not valid UTF-8") }
        return text
    }

    public func expectEnd() throws(DecodeError) {
        guard remaining == 0 else { throw .invalid("\(remaining) unexpected trailing bytes") }
    }
}

extension ByteReader {
    /// Decodes from a byte array with a closure, the usual entry point in tests and on disk data.
    public static func decode<T>(_ bytes: [UInt8], _ body: (inout ByteReader) throws(DecodeError) -> T) throws(DecodeError) -> T {
        do {
            return try bytes.withUnsafeBytes { raw in
                var reader = ByteReader(raw)
                return try body(&reader)
            }
        } catch let error as DecodeError {
            throw error
        } catch {
            preconditionFailure("unexpected error \(error)")
        }
    }
}
