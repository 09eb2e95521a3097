/* A small, safe Markdown subset for chat answers: the text is HTML-escaped FIRST, then only
   known constructs are turned into tags, so model output can never inject markup or script.
   Supported: fenced code (``` even while still streaming), inline code, headings, bold, italic,
   strikethrough, links (http, https, mailto only), bullet/numbered lists, block quotes, rules,
   pipe tables, paragraphs with line breaks. */
(function (global) {
  "use strict";

  function escapeHtml(s) {
    return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  function inline(escaped) {
    var codes = [];
    var s = escaped.replace(/`([^`\n]+)`/g, function (_, code) {
      codes.push("<code>" + code + "</code>");
      return "\u0000" + (codes.length - 1) + "\u0000";
    });
    s = s.replace(/\[([^\]\n]+)\]\(((?:https?:\/\/|mailto:)[^\s)]+)\)/g, function (_, text, url) {
      return '<a href="' + url + '" target="_blank" rel="noopener noreferrer nofollow">' + text + "</a>";
    });
    s = s.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>")
      .replace(/__([^_\n]+)__/g, "<strong>$1</strong>")
      .replace(/(^|[^*\w])\*([^*\s][^*\n]*?)\*(?!\w)/g, "$1<em>$2</em>")
      .replace(/(^|[^_\w])_([^_\s][^_\n]*?)_(?!\w)/g, "$1<em>$2</em>")
      .replace(/~~([^~\n]+)~~/g, "<del>$1</del>");
    return s.replace(/\u0000(\d+)\u0000/g, function (_, i) { return codes[+i]; });
  }

  function isTableSep(line) { return /^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$/.test(line); }
  function cells(line) {
    return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map(function (c) { return inline(c.trim()); });
  }

  function blocks(escapedText) {
    var lines = escapedText.split("\n");
    var out = [];
    var para = [];
    var i = 0;
    function flush() {
      if (para.length) { out.push("<p>" + para.map(inline).join("<br>") + "</p>"); para = []; }
    }
    while (i < lines.length) {
      var line = lines[i];
      var m;
      if (!line.trim()) { flush(); i++; continue; }
      if ((m = /^(#{1,6})\s+(.*)$/.exec(line))) {
        flush(); var level = Math.min(m[1].length + 2, 6);
        out.push("<h" + level + ">" + inline(m[2]) + "</h" + level + ">"); i++; continue;
      }
      if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) { flush(); out.push("<hr>"); i++; continue; }
      if (/^\s*&gt;\s?/.test(line)) {
        flush(); var quote = [];
        while (i < lines.length && /^\s*&gt;\s?/.test(lines[i])) { quote.push(lines[i].replace(/^\s*&gt;\s?/, "")); i++; }
        out.push("<blockquote>" + blocks(quote.join("\n")) + "</blockquote>"); continue;
      }
      if (/^\s*([-*+]|\d+[.)])\s+/.test(line)) {
        flush(); var ordered = /^\s*\d+[.)]\s+/.test(line); var items = [];
        while (i < lines.length && /^\s*([-*+]|\d+[.)])\s+/.test(lines[i])) {
          items.push("<li>" + inline(lines[i].replace(/^\s*([-*+]|\d+[.)])\s+/, "")) + "</li>"); i++;
        }
        out.push((ordered ? "<ol>" : "<ul>") + items.join("") + (ordered ? "</ol>" : "</ul>")); continue;
      }
      if (line.indexOf("|") !== -1 && i + 1 < lines.length && isTableSep(lines[i + 1])) {
        flush(); var head = cells(line); i += 2; var rows = [];
        while (i < lines.length && lines[i].indexOf("|") !== -1 && lines[i].trim()) { rows.push(cells(lines[i])); i++; }
        out.push("<table><thead><tr><th>" + head.join("</th><th>") + "</th></tr></thead><tbody>" +
          rows.map(function (r) { return "<tr><td>" + r.join("</td><td>") + "</td></tr>"; }).join("") + "</tbody></table>");
        continue;
      }
      para.push(line); i++;
    }
    flush();
    return out.join("");
  }

  function render(text) {
    var escaped = escapeHtml(String(text == null ? "" : text).replace(/\r\n?/g, "\n"));
    var parts = escaped.split(/^```/m);
    var html = [];
    for (var k = 0; k < parts.length; k++) {
      if (k % 2 === 0) { html.push(blocks(parts[k])); continue; }
      // Inside a fence: first line is the language tag; an unterminated fence (still streaming) runs to the end.
      var nl = parts[k].indexOf("\n");
      var lang = nl === -1 ? parts[k] : parts[k].slice(0, nl);
      var code = nl === -1 ? "" : parts[k].slice(nl + 1).replace(/\n$/, "");
      var cls = /^[\w+-]+$/.test(lang.trim()) ? ' class="language-' + lang.trim() + '"' : "";
      html.push("<pre><code" + cls + ">" + code + "</code></pre>");
    }
    return html.join("");
  }

  global.WebchatMarkdown = { render: render, escapeHtml: escapeHtml };
})(window);
