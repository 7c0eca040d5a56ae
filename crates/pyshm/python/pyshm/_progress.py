"""Progress bars for ``progress=True`` (tqdm, an optional dependency: ``pyshm[progress]``)."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

__all__ = ["bar", "counted", "length_of"]


def bar(total: Optional[int], desc: str) -> Any:
    """A tqdm bar, or ``ImportError`` saying how to get tqdm."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            "progress=True shows a tqdm progress bar, and tqdm is not installed: "
            "pip install 'pyshm[progress]' (or pip install tqdm)"
        ) from None
    return tqdm(total=total, desc=desc)


def length_of(iterables: Iterable[Any]) -> Optional[int]:
    """The number of calls ``map`` makes over ``iterables``, if they all have a length."""
    lengths = []
    for it in iterables:
        try:
            lengths.append(len(it))
        except TypeError:
            return None
    return min(lengths) if lengths else None


def counted(results: Iterator[Any], progress: Any) -> Iterator[Any]:
    """``results``, advancing ``progress`` by one per item and closing it at the end."""
    try:
        for r in results:
            progress.update(1)
            yield r
    finally:
        progress.close()
