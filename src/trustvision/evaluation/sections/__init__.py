"""Audit sections: each turns (Classifier, Dataset, config) into a :class:`~trustvision.results.SectionResult`."""
