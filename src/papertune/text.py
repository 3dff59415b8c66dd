"""Small text helpers shared by the dataset stages."""

from __future__ import annotations

# English function words: they carry no content, so overlap and support are measured on the other words.
STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing done down during each either few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just may
    me might more most must my myself neither no nor not now of off on once only or other our ours
    ourselves out over own same shall she should so some such than that the their theirs them themselves
    then there these they this those through to too under until up upon us very was we were what when
    where whether which while who whom whose why will with within without would yes you your yours
    yourself yourselves
    """.split()
)
