/// Builds C source text line by line with four-space indentation.
import Foundation

struct CWriter {
    private(set) var lines: [String] = []
    private var depth = 0

    mutating func line(_ text: String) {
        lines.append(text.isEmpty ? "" : String(repeating: "    ", count: depth) + text)
    }

    /// Writes a preprocessor directive, which always starts in column 0.
    mutating func directive(_ text: String) {
        lines.append(text)
    }

    mutating func lines(_ texts: [String]) {
        for text in texts { line(text) }
    }

    /// Writes `header {` and indents the lines that follow until `close()`.
    mutating func open(_ header: String) {
        line(header.isEmpty ? "{" : header + " {")
        depth += 1
    }

    /// Ends the open block's branch with `} else {` and starts the else branch.
    mutating func openElse() {
        depth -= 1
        line("} else {")
        depth += 1
    }

    mutating func close(_ trailer: String = "}") {
        depth -= 1
        line(trailer)
    }

    /// Writes `for (int variable = 0; variable < bound; variable += step) {`.
    mutating func openFor(_ variable: String, from start: Int = 0, to bound: Int, step: Int = 1) {
        openFor(variable, from: start, to: String(bound), step: step)
    }

    mutating func openFor(_ variable: String, from start: Int = 0, to bound: String, step: Int = 1) {
        let increment = step == 1 ? "++\(variable)" : "\(variable) += \(step)"
        open("for (int \(variable) = \(start); \(variable) < \(bound); \(increment))")
    }

    var text: String { lines.joined(separator: "\n") + "\n" }
}

/// C expression helpers that fold constants, so the generated index arithmetic stays short.
enum CExpression {
    /// `a * k`, folded when `a` is an integer literal or `k` is 0 or 1.
    static func times(_ a: String, _ k: Int) -> String {
        if let literal = Int(a) { return String(literal * k) }
        if k == 0 { return "0" }
        if k == 1 { return a }
        return "\(parenthesized(a)) * \(k)"
    }

    /// Returns the sum of the terms, with integer literals added up and a zero sum left out.
    static func sum(_ terms: [String]) -> String {
        var constant = 0
        var symbolic: [String] = []
        for term in terms {
            if let literal = Int(term) { constant += literal } else { symbolic.append(term) }
        }
        if constant != 0 || symbolic.isEmpty { symbolic.append(String(constant)) }
        return symbolic.joined(separator: " + ").replacingOccurrences(of: "+ -", with: "- ")
    }

    /// `pointer + offset`, or `pointer` for a zero offset.
    static func offset(_ pointer: String, _ offset: String) -> String {
        offset == "0" ? pointer : "\(pointer) + \(offset)"
    }

    static func parenthesized(_ a: String) -> String {
        a.contains(" ") ? "(\(a))" : a
    }

    /// Returns a float literal that converts back to exactly `value`.
    static func float(_ value: Float) -> String {
        var text = "\(value)"
        if !text.contains(".") && !text.contains("e") { text += ".0" }
        return text + "f"
    }

    /// Returns a double literal that converts back to exactly `value`.
    static func double(_ value: Double) -> String {
        var text = "\(value)"
        if !text.contains(".") && !text.contains("e") { text += ".0" }
        return text
    }
}
