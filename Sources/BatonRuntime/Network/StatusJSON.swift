import BatonCore
import Foundation

/// The JSON of the status types (their keys are snake_case), sorted, as
/// agents answer `status` and as `baton status --json` prints.
public enum StatusJSON {
    public static func encode(_ value: some Encodable, pretty: Bool = false) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        // The status types hold strings, numbers and flags only: encoding cannot fail.
        return String(decoding: (try? encoder.encode(value)) ?? Data("{}".utf8), as: UTF8.self)
    }

    public static func decode<T: Decodable>(_ type: T.Type, from text: String) throws -> T {
        let decoder = JSONDecoder()
        return try decoder.decode(type, from: Data(text.utf8))
    }
}
