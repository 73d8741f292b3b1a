//! The books, their details, reviews and ratings: the data each service serves, as Bookinfo
//! keeps it in each service's own code.

use std::borrow::Cow;

/// A book on the product page.
#[derive(Debug)]
pub struct Book {
    /// The product id in URLs, API answers and events.
    pub id: u32,
    /// The title.
    pub title: &'static str,
    /// The blurb under the title.
    pub summary: &'static str,
    /// What details serves.
    pub details: Details,
    /// What reviews serves, and ratings rates.
    pub reviews: [Review; 2],
}

/// A book's details, as details serves them and productpage reads them.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Details {
    /// Author.
    pub author: Cow<'static, str>,
    /// Year of publication.
    pub year: u32,
    /// Paperback, hardcover...
    pub kind: Cow<'static, str>,
    /// Page count.
    pub pages: u32,
    /// Publisher.
    pub publisher: Cow<'static, str>,
    /// Language.
    pub language: Cow<'static, str>,
    /// ISBN-10.
    pub isbn_10: Cow<'static, str>,
    /// ISBN-13.
    pub isbn_13: Cow<'static, str>,
}

/// A review, and the stars its reviewer gave in ratings.
#[derive(Debug)]
pub struct Review {
    /// Who wrote it.
    pub reviewer: &'static str,
    /// What they wrote.
    pub text: &'static str,
    /// Their rating, 1 to 5, which ratings serves.
    pub stars: u32,
}

/// Every book.
pub const BOOKS: &[Book] = &[
    Book {
        id: 0,
        title: "The Comedy of Errors",
        summary: "Wikipedia Summary: The Comedy of Errors is one of William Shakespeare's early \
                  plays. It is his shortest and one of his most farcical comedies, with a major \
                  part of the humour coming from slapstick and mistaken identity, in addition to \
                  puns and word play.",
        details: Details {
            author: Cow::Borrowed("William Shakespeare"),
            year: 1595,
            kind: Cow::Borrowed("paperback"),
            pages: 200,
            publisher: Cow::Borrowed("PublisherA"),
            language: Cow::Borrowed("English"),
            isbn_10: Cow::Borrowed("1234567890"),
            isbn_13: Cow::Borrowed("123-1234567890"),
        },
        reviews: [
            Review {
                reviewer: "Reviewer1",
                text: "An extremely entertaining play by Shakespeare. The slapstick humour is \
                       refreshing!",
                stars: 5,
            },
            Review {
                reviewer: "Reviewer2",
                text: "Absolutely fun and entertaining. The play lacks thematic depth when \
                       compared to other plays by Shakespeare.",
                stars: 4,
            },
        ],
    },
    Book {
        id: 1,
        title: "Hamlet",
        summary: "Wikipedia Summary: Hamlet is a tragedy by William Shakespeare, set in Denmark: \
                  Prince Hamlet's revenge on his uncle Claudius, who murdered Hamlet's father to \
                  seize the throne and marry Hamlet's mother.",
        details: Details {
            author: Cow::Borrowed("William Shakespeare"),
            year: 1603,
            kind: Cow::Borrowed("hardcover"),
            pages: 342,
            publisher: Cow::Borrowed("PublisherB"),
            language: Cow::Borrowed("English"),
            isbn_10: Cow::Borrowed("0987654321"),
            isbn_13: Cow::Borrowed("098-0987654321"),
        },
        reviews: [
            Review {
                reviewer: "Reviewer3",
                text: "The longest of the plays, and not a line too many.",
                stars: 5,
            },
            Review {
                reviewer: "Reviewer4",
                text: "Brilliant, though everybody dies.",
                stars: 3,
            },
        ],
    },
];

/// The book with product id `id`.
pub fn book(id: u32) -> Option<&'static Book> {
    BOOKS.iter().find(|book| book.id == id)
}
