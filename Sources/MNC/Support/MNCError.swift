/// An error caused by user input (a spec, a weights file, an image, a command-line option).
///
/// `description` is the complete one-line message that `mnc` prints after `error: `.
/// Errors in a spec carry the source location and print as `FILE:LINE:COLUMN: error: ...`.
public struct MNCError: Error, CustomStringConvertible, Equatable {
    public var message: String
    public var location: SourceLocation?

    public init(_ message: String, at location: SourceLocation? = nil) {
        self.message = message
        self.location = location
    }

    public var description: String {
        if let location {
            return "\(location): error: \(message)"
        }
        return "error: \(message)"
    }
}

/// A position in a text file; line and column count from 1.
public struct SourceLocation: Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}
