"""A learned linear projection of a model's vectors (issue 17): trained on confirmed
(query -> product) pairs and the catalogue's labelled images, stored with an index build
and applied to its gallery and query vectors alike."""
