"""A tiny element tree of rendered HTML (html.parser), for tests that check
the markup's structure instead of its exact text."""
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Dict, Iterator, List, Optional, Union

VOID = {"br", "meta", "img", "hr", "input", "link"}


@dataclass
class Element:
    tag: str
    attrs: Dict[str, Optional[str]]
    children: List[Union["Element", str]] = field(default_factory=list)
    parent: Optional["Element"] = None

    @property
    def classes(self) -> List[str]:
        return (self.attrs.get("class") or "").split()

    def iter(self) -> Iterator["Element"]:
        """This element and all below it, in document order."""
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def find_all(self, css_class: str) -> List["Element"]:
        return [element for element in self.iter() if css_class in element.classes]

    def find(self, css_class: str) -> "Element":
        found = self.find_all(css_class)
        assert found, f"no element of class {css_class}"
        return found[0]

    def text(self, skip_classes: tuple = ()) -> str:
        """The text below this element; elements with one of skip_classes left out."""
        parts = []
        for child in self.children:
            if isinstance(child, str):
                parts.append(child)
            elif not set(child.classes) & set(skip_classes):
                parts.append(child.text(skip_classes))
        return "".join(parts)

    def ancestors(self) -> Iterator["Element"]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = Element(tag, dict(attrs), parent=self.stack[-1])
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(markup: str) -> Element:
    """The tree of `markup`; asserts that every element is closed in order."""
    builder = _Builder()
    builder.feed(markup)
    builder.close()
    assert builder.stack == [builder.root], f"unclosed: {[e.tag for e in builder.stack[1:]]}"
    return builder.root
